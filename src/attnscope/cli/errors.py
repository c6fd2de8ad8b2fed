"""The one exception the command line turns into a one-line message and exit status 2."""


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""
