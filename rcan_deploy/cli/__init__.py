"""``rcan-deploy`` command line: a thin click layer over :mod:`rcan_deploy.api`.

User mistakes end in one line on stderr and exit code 2, failed checks/gates in exit code 1,
Ctrl-C in exit code 130 and SIGTERM in 143, each with one line; internal bugs keep their
traceback. Warnings of rcan-deploy are printed (one line each) only when the command succeeds.
"""

from __future__ import annotations

import signal
import sys

INTERRUPTED, TERMINATED = 130, 143


class _Terminated(BaseException):
    """SIGTERM, raised so that ``finally`` blocks remove temporary files."""


def _on_sigterm(signum, frame):
    raise _Terminated


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rcan-deploy`` console script."""
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("rcan-deploy: interrupted", file=sys.stderr)
        return INTERRUPTED
    except _Terminated:
        print("rcan-deploy: terminated", file=sys.stderr)
        return TERMINATED
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> int:
    import warnings

    import click

    from ..errors import GateFailure, UserError, VerificationError
    from .commands import cli

    args = sys.argv[1:] if argv is None else list(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with cli.make_context("rcan-deploy", args) as ctx:
                cli.invoke(ctx)
        except click.exceptions.Exit as exc:
            return exc.exit_code
        except click.exceptions.Abort:
            click.echo("rcan-deploy: aborted", err=True)
            return INTERRUPTED
        except click.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx else "rcan-deploy"
            message = " ".join(exc.format_message().split())
            click.echo(f"{command}: error: {message} (see --help)", err=True)
            return 2
        except click.ClickException as exc:
            click.echo(f"rcan-deploy: error: {' '.join(exc.format_message().split())}", err=True)
            return exc.exit_code
        except (UserError, GateFailure, VerificationError) as exc:
            label = "error" if isinstance(exc, UserError) else "failed"
            click.echo(f"rcan-deploy: {label}: {' '.join(str(exc).split())}", err=True)
            return exc.exit_code
    shown = set()
    for warning in caught:
        text = " ".join(str(warning.message).split())
        if "rcan_deploy" in warning.filename and text not in shown:
            shown.add(text)
            click.echo(f"rcan-deploy: warning: {text}", err=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
