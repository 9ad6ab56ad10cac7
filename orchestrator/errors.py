"""Errors the user sees as one line (and a non-zero exit), never as a traceback."""


class UserError(Exception):
    """Something about the user's input, output or settings; the message says what."""


class MediaError(UserError):
    """An input that cannot be read as a video, or an output that cannot be written."""


def printable(text: str) -> str:
    """A value from a client, safe to put in a message or a log line: control characters
    (a newline would forge a log line) shown escaped."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(text))
