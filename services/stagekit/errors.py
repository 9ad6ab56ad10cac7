"""The error a stage raises for a request it cannot take (its own module, so that the
modules stage.py uses can raise it too)."""


class StageError(ValueError):
    """The request cannot be processed as given (bad size, format or parameter).

    Served stages answer it with INVALID_ARGUMENT; the message is shown to the user."""
