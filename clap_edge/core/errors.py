"""Errors that clap-edge raises for bad input: each says what is wrong and where.

They live in one stdlib-only module so every room (including the torch-free
runtime) can raise and catch them, and the CLI can turn them into a one-line
message and an exit code instead of a traceback.
"""


class ClapEdgeError(Exception):
    """Base class: a problem the user can fix (bad file, bad name, bad argument)."""


class ModelLoadError(ClapEdgeError):
    """A model name, pretrained tag or checkpoint could not be loaded."""


class CheckpointError(ClapEdgeError):
    """A head checkpoint is not a state dict, misses keys or has wrong shapes."""


class PromptError(ClapEdgeError):
    """Class names or prompt vocabularies are empty, malformed or do not fit."""


class BundleError(ClapEdgeError):
    """A bundle is missing a file, was tampered with or does not match its manifest."""


class ImageError(ClapEdgeError):
    """An image file could not be decoded (names the path)."""


class BackendUnavailableError(ClapEdgeError):
    """A runtime backend whose library is not installed (names the pip extra)."""


def first_line(error: BaseException) -> str:
    """``Type: first line of the message`` (just the type when the message is empty, as for EOFError
    from an empty file): the short cause a one-line error quotes. The type carries meaning where the
    message alone does not ("KeyError: 101", not "101")."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


class OutputError(ClapEdgeError):
    """An output path cannot be written (another process is writing it, or it exists)."""


class OutputExistsError(OutputError, FileExistsError):
    """The output exists and overwriting was not asked for (still a FileExistsError for old callers)."""


# errno values that mean the machine, not the input, is the problem: said as such in the one line
_ERRNO_HINTS = {"ENOSPC": "the disk is full", "EDQUOT": "the disk quota is exhausted", "EFBIG": "file too large",
                "EROFS": "read-only file system"}


def os_error_line(error: OSError) -> str:
    """One line for an OSError from reading or writing a path: ``PATH: strerror (hint)``.

    The CLI prints it instead of a traceback (a full disk in export or sign, an output under /proc,
    an unwritable folder); the path is the one the operating system named."""
    import errno

    where = error.filename if error.filename is not None else None
    cause = error.strerror or first_line(error)
    hint = _ERRNO_HINTS.get(errno.errorcode.get(error.errno or 0, ""))
    text = f"{cause} ({hint})" if hint and hint.lower() not in cause.lower() else cause
    if where is not None:
        target = f" -> {error.filename2}" if error.filename2 is not None else ""
        return f"{where}{target}: {text}"
    return text
