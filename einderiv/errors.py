"""The exception hierarchy: every mistake a user can make raises an EinderivError."""

__all__ = ["EinderivError", "EinderivSyntaxError", "IndexSizeError", "InputError"]


class EinderivError(ValueError):
    """Base class of every error a user of einderiv can cause."""


class EinderivSyntaxError(EinderivError):
    """The formula text does not follow the language; the message shows line, column and caret."""

    def __init__(self, message, line=None, column=None):
        super().__init__(message)
        self.line = line
        self.column = column


class IndexSizeError(EinderivError):
    """An index has different sizes in different places, or no size at all."""


class InputError(EinderivError):
    """An input array is missing, extra, or has the wrong number of axes."""
