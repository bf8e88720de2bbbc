"""Error types: user mistakes (one line, exit 2) versus accuracy-gate failures (exit 1).

Anything else that escapes is an internal bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input (file, flag, checkpoint). The CLI prints one line, exits 2."""

    exit_code = 2


class GateFailure(Exception):
    """An accuracy gate failed. The CLI prints the message and exits 1."""

    exit_code = 1


class VerificationError(Exception):
    """A produced graph does not reproduce its reference within tolerance. One line, exit 1."""

    exit_code = 1
