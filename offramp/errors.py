class OfframpError(Exception):
    """A user-facing failure: the CLI prints its message on one line and exits non-zero."""

    exit_code = 1


class NotSupportedHere(OfframpError):
    """The request is valid but this host (or this build of offramp) cannot do it."""

    exit_code = 2
