"""Errors the user sees as one line (and a non-zero exit), never as a traceback."""


class UserError(Exception):
    """Something about the user's input, output or settings; the message says what."""


class MediaError(UserError):
    """An input that cannot be read as a video, or an output that cannot be written."""
