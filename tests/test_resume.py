"""Kill a training process for real at many points; the rerun resumes and ends bitwise as if never killed.

Each case runs tests/train_faults.py (the workflow's training call, seeds 0 and 1 packed) in a subprocess
that gets a real signal at one point of the training code, checks what the crash left on disk, runs it
again and compares the trajectory files byte for byte with those of an uninterrupted run.
"""

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import make_encoded

from bachglass import io, trajectory

DRIVER = Path(__file__).with_name("train_faults.py")
sys.path.insert(0, str(DRIVER.parent))
import train_faults  # noqa: E402

STEPS, RESUME_EVERY = train_faults.CONFIG.steps, train_faults.CONFIG.resume_every
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def command(encoded: Path, run_dir: Path, steps: int, *fault: str | int) -> list[str]:
    return [sys.executable, str(DRIVER), str(encoded), str(run_dir), str(steps), *map(str, fault)]


def drive(
    encoded: Path, run_dir: Path, *fault: str | int, steps: int = STEPS
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(encoded, run_dir, steps, *fault), capture_output=True, text=True, env=ENV)


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "encoded.nc"
    io.write_netcdf(make_encoded(10, 12, (5, 4, 5, 6), seed=3, n_heldout=2), path)
    return path


@pytest.fixture(scope="module")
def reference(encoded: Path, tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """The trajectories' bytes of the run that nothing interrupted."""
    run_dir = tmp_path_factory.mktemp("reference")
    proc = drive(encoded, run_dir)
    assert proc.returncode == 0, proc.stderr
    return [path.read_bytes() for path in train_faults.runs(run_dir)]


def assert_crash_left_nothing_broken(run_dir: Path) -> list[int]:
    """Every file under a final name is whole: trajectories readable, checkpoints loadable; their steps."""
    steps = []
    for path in train_faults.runs(run_dir):
        if path.exists():
            io.read_netcdf(path, required=trajectory.VARIABLES)  # a DataError if truncated
        for checkpoint in io.checkpoint_paths(path, train_faults.SEEDS):
            if checkpoint.exists():
                steps.append(torch.load(checkpoint, weights_only=True)["counters"][0])
    return steps


def assert_resumes_to_the_reference(
    encoded: Path, run_dir: Path, reference: list[bytes], steps: int = STEPS
) -> str:
    proc = drive(encoded, run_dir, steps=steps)
    assert proc.returncode == 0, proc.stderr
    assert [path.read_bytes() for path in train_faults.runs(run_dir)] == reference
    leftovers = sorted(p.name for p in run_dir.rglob("*") if p.is_file() and p.suffix != ".nc")
    assert leftovers == []  # checkpoints and half-written .tmp files removed
    return proc.stderr


# (fault, occurrence, steps of the checkpoints the crash leaves, step the rerun resumes at): 5 SIGKILL
# points inside training, 2 while files are written and 1 after, each resumed from the last complete save
KILLS = [
    ("step", 3, [], None),  # before the first checkpoint: starts over
    ("step", 33, [28, 28], 28),  # mid step, 5 steps after a save
    ("record", 20, [14, 14], 14),  # a snapshot taken in memory, not saved
    ("save", 5, [14, 14], 14),  # the 3rd save (step 21): run 0's file half-written; both stay at 14
    ("between", 2, [7], None),  # run 0 saved at step 7, run 1 not yet: run 0 starts over with it
    ("between", 6, [21, 14], 14),  # run 0 saved at step 21, run 1 not: run 0 steps back to 14
    ("netcdf", 1, [56, 56], 56),  # the pack's trajectory half-written at the end
    ("written", 1, [56, 56], 56),  # the trajectory in place, the checkpoints not yet removed
]


@pytest.mark.parametrize(("fault", "n", "left", "resumed"), KILLS, ids=[f"{k[0]}-{k[1]}" for k in KILLS])
def test_sigkill_then_rerun_gives_the_uninterrupted_bytes(
    encoded, reference, tmp_path, fault, n, left, resumed
):
    proc = drive(encoded, tmp_path, fault, n)
    assert proc.returncode == -signal.SIGKILL, proc.stderr  # the kill point was reached
    assert assert_crash_left_nothing_broken(tmp_path) == left
    log = assert_resumes_to_the_reference(encoded, tmp_path, reference)
    assert re.findall(r"resuming at step (\d+)", log) == ([] if resumed is None else [str(resumed)] * 2)
    if len(set(left)) > 1 or len(left) == 1:  # a pack saved apart is realigned, not trained apart
        assert "where the rest of its pack resumes" in log or "starts over with the rest" in log


@pytest.mark.parametrize(("fault", "status"), [("sigterm", 128 + signal.SIGTERM), ("sigint", -signal.SIGINT)])
def test_sigterm_or_sigint_saves_at_the_next_step_and_the_rerun_goes_on_from_there(
    encoded, reference, tmp_path, fault, status
):
    proc = drive(encoded, tmp_path, fault, 31)
    assert proc.returncode == status, proc.stderr
    name = "SIGTERM" if fault == "sigterm" else "SIGINT"
    assert f"{name} at step 32 of {STEPS}: resumable state saved" in proc.stderr
    assert assert_crash_left_nothing_broken(tmp_path) == [32, 32]  # not the periodic save at 28
    log = assert_resumes_to_the_reference(encoded, tmp_path, reference)
    assert "resuming at step 32" in log


def start_training(cmd: list[str]) -> tuple[subprocess.Popen[str], float]:
    """Start the driver; return it once its training starts, and the time then."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=ENV)
    assert proc.stderr is not None
    for line in proc.stderr:
        if train_faults.START in line:
            break
    return proc, time.monotonic()


def test_sigkill_at_random_times_loses_nothing_but_the_steps_since_the_last_save(encoded, tmp_path):
    """Kill from outside at random moments of a longer training, again and again: the end is the same."""
    steps = 1500
    proc, start = start_training(command(encoded, tmp_path / "reference", steps))
    proc.communicate()
    seconds = time.monotonic() - start  # of training and writing, uninterrupted
    assert proc.returncode == 0
    reference = [path.read_bytes() for path in train_faults.runs(tmp_path / "reference")]
    rng, run_dir, resumed, saved, kills = random.Random(0), tmp_path / "killed", set(), 0, 0
    for _ in range(4):
        proc, _ = start_training(command(encoded, run_dir, steps))
        time.sleep(rng.uniform(0.1, 0.6) * seconds * (steps - saved) / steps)  # within what is left
        proc.kill()
        log = proc.communicate()[1]
        if proc.returncode == 0:  # it finished first (a loaded machine): nothing left to kill
            break
        assert proc.returncode == -signal.SIGKILL, log
        kills += 1
        resumed |= set(re.findall(r"resuming at step (\d+)", log))
        saved = max([saved, *map(int, re.findall(r"step (\d+) of \d+: resumable state saved", log))])
        assert_crash_left_nothing_broken(run_dir)
    log = assert_resumes_to_the_reference(encoded, run_dir, reference, steps)
    resumed |= set(re.findall(r"resuming at step (\d+)", log))
    assert kills >= 2 and resumed  # killed again and again, and resumed from a save at least once
