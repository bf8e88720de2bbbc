"""``rcan-deploy`` command line: a thin click layer over :mod:`rcan_deploy.api`.

User mistakes end in one line on stderr and exit code 2, failed checks/gates in exit code 1;
internal bugs keep their traceback.
"""

from __future__ import annotations

import sys

import click

from ..errors import GateFailure, UserError, VerificationError
from .commands import cli


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rcan-deploy`` console script."""
    try:
        cli.main(args=argv, prog_name="rcan-deploy", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("rcan-deploy: aborted", err=True)
        return 130
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "rcan-deploy"
        click.echo(f"{command}: error: {exc.format_message()} (see --help)", err=True)
        return 2
    except click.ClickException as exc:
        click.echo(f"rcan-deploy: error: {exc.format_message()}", err=True)
        return exc.exit_code
    except (UserError, GateFailure, VerificationError) as exc:
        label = "error" if isinstance(exc, UserError) else "failed"
        click.echo(f"rcan-deploy: {label}: {exc}", err=True)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
