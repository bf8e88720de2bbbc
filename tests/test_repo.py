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


def _glob_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as a regex: '**/' spans any folders, '*' and '?' stay in one."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    return re.compile(out)


def _docker_ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its folders decides."""
    parts, ignored = path.split("/"), False
    for pattern in patterns:
        regex = _glob_regex(pattern.lstrip("!"))
        if any(regex.fullmatch("/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            ignored = not pattern.startswith("!")
    return ignored


def test_dockerignore_drops_artifacts_at_any_depth_and_keeps_the_project():
    import subprocess

    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for path in ("rcan.onnx", "work/rcan_int8.onnx", "work/rcan_int8.onnx.json",
                 "a/b/rcan_int8.plan", "a/b/rcan_int8.plan.json", "x/model.engine",
                 "runs/timing.cache", "models/mine.pt.state.pt", "bench_report/report.json",
                 "out/rcan_deploy_demo/report/report.md", "x/bench_report/psnr.png",
                 ".cache/rcan_deploy/crops/a.npz", "sub/.cache/x", "sub/.venv-ci/bin/python",
                 "tests/__pycache__/x.pyc", "build/lib/x.py"):
        assert _docker_ignored(path, patterns), path
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    kept = [p for p in tracked if not p.startswith((".ci/", ".git"))]
    assert "models/rcan-sr4k_x2.pt" in kept
    assert not [p for p in kept if _docker_ignored(p, patterns)]
