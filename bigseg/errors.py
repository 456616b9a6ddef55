"""User-facing errors: one type, caught once by the CLI and printed as one line."""


class BigsegError(Exception):
    """A mistake in what the user asked for; the message says what and how to fix it."""


class InputError(BigsegError):
    """The input image cannot be used as given."""


class OutputError(BigsegError):
    """The output location cannot be written as asked."""


class ParameterError(BigsegError):
    """A method, block or cluster parameter does not fit the image."""


class BlockError(BigsegError):
    """A block could not be processed (unreadable input, bad values, the method failed); names the block."""


class JobCancelled(BigsegError):
    """The job was cancelled; what it finished is kept and a rerun of the same job resumes it."""

    def __init__(self, message: str = "job cancelled; the output is incomplete: run the same job again to resume"):
        super().__init__(message)
