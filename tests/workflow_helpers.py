"""Helpers for tests that run the workflow in a throw-away copy of the repository."""

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bachglass.params import deep_merge

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TINY = ROOT / "tests" / "tiny.yaml"
# DVC stages of the tiny study that a train edit makes stale (grid pack 0, aging pack 0-1, Langevin pack 0),
# and the stage groups downstream of them, sorted
TINY_TRAIN_STAGES = {f"train_pack@{d}-{w}-0" for d in (1, 2) for w in (2, 8)}
TINY_TRAIN_STAGES |= {"train_aging_pack@1-8-0-1"}
TINY_TRAIN_STAGES |= {f"train_langevin_pack@{t}-1-8-0" for t in ("0.001", "0.1")}
DOWNSTREAM_OF_TRAIN = [
    "check_science",
    "combine_aging",
    "combine_langevin",
    "combine_study",
    "extract_aging_observables",
    "extract_langevin_observables",
    "extract_observables",
    "fit_study",
    "plot_figures",
    "propose_widths",
]
# the tiny study without its Langevin sweep (the SLURM tests, which count jobs and results)
NO_LANGEVIN = {"langevin": {"depth": [], "width": [], "seed": [], "temperature": []}}


def env() -> dict[str, str]:
    """The environment for workflow subprocesses: this venv's tools first, one thread each."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command in ``cwd``; on failure show its output in the assertion message."""
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def project_files() -> list[str]:
    """Tracked and untracked-but-not-ignored files of the repository (what a clone would have)."""
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True
    )
    return [f for f in out.stdout.splitlines() if (ROOT / f).is_file()]


def copy_project(dest: Path, overrides: dict[str, Any] | None = None) -> Path:
    """Copy the project into ``dest`` as a fresh git repo whose params.yaml is the tiny study."""
    for rel in project_files():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)
    (dest / "dvc.lock").unlink(missing_ok=True)
    write_params(dest, yaml.safe_load(TINY.read_text()) | (overrides or {}))
    run(["git", "init", "-q"], dest)
    git_commit(dest, "copy")
    return dest


def git_commit(repo: Path, message: str) -> None:
    """Commit everything in ``repo`` (with a throw-away identity)."""
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], repo)


def write_params(repo: Path, overrides: dict[str, Any]) -> None:
    """Write the project's params.yaml merged with ``overrides`` into ``repo``."""
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump(deep_merge(base, overrides), sort_keys=False))


def edit_params(repo: Path, overrides: dict[str, Any]) -> None:
    """Change some keys of ``repo``'s params.yaml in place."""
    current = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump(deep_merge(current, overrides), sort_keys=False))


def wait_for(
    what: str,
    condition: Callable[[], object],
    proc: subprocess.Popen,
    detail: Callable[[], str] = lambda: "",
    interval: float = 0.5,
    timeout: float = 120.0,
) -> object:
    """Poll ``condition`` every ``interval`` s until it holds and return its value; fail if the process
    ``proc`` ends first, or after ``timeout`` s, showing ``detail()``."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert proc.poll() is None, f"{proc.args[0]} ended ({proc.returncode}) before {what}:\n{detail()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{detail()}"
        time.sleep(interval)
    return value
