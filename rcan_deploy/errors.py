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


def short_reason(exc: BaseException, limit: int = 160) -> str:
    """One readable line from a library's exception: its first line without C++ frames and
    error-code prefixes, cut at a word boundary; the exception type when it says nothing."""
    import re

    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"\s*(Exception raised from|in function|at ) .*$", "", text)
    text = " ".join(text.split())
    if not text or text == "None":
        return type(exc).__name__
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " ..."
    return text


def os_reason(exc: OSError) -> str:
    """The OS's text for an OSError (its type name when the OS gave none)."""
    return exc.strerror or type(exc).__name__
