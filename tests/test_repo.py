"""The README quick start is two commands and CI runs its test command verbatim."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _quick_start_commands():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, re.S)


def test_quick_start_has_two_commands_and_ci_runs_the_test_one():
    commands = _quick_start_commands()
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    assert all("-c constraints.txt" in c for c in commands)
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


def test_constraints_install_the_pinned_cpu_torch():
    import torch

    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().split()
                if "==" in line)
    assert torch.__version__.split("+")[0] == pins["torch"]  # installed with -c constraints.txt
    assert torch.version.cuda is None, "constraints.txt must give the CPU build of torch"


def test_reference_table_ships_inside_the_package():
    from rcan_deploy.costs import reference_rows

    assert (ROOT / "rcan_deploy" / "reference_table.csv").resolve() == \
        (ROOT / "benchmarks" / "reference_table.csv").resolve()
    assert len(reference_rows("official")) == 4 and len(reference_rows("basicsr", "rcan-sr4k")) == 2
