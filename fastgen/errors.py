"""Errors in what the user asked for (a name, an option, a path), as opposed to bugs.

The `fastgen` command prints a `UserError` as one line and exits with status 2; every other
exception keeps its traceback (`fastgen --debug ...` shows the traceback of user errors too).
Each class also derives from the builtin it refines, so `except ValueError` etc. still work.
"""


class UserError(Exception):
    """Marker base: the message says what to change; no traceback needed."""


class BadArgument(UserError, ValueError):
    """An unknown name or an option out of range."""


class BadOption(UserError, TypeError):
    """An option a dataset or model does not have, or a required one left out."""


class MissingFile(UserError, FileNotFoundError):
    """A checkpoint, dataset folder or file that is not there."""


class OutputExists(UserError, FileExistsError):
    """Refusing to overwrite earlier results without --force."""


class RunFolderError(UserError, OSError):
    """The run folder cannot be created, written, or is in use by another training."""
