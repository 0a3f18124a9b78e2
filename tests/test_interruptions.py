"""The workflow interrupted: snakemake killed mid-training, and two invocations on the same results.

Each test works on a copy of the finished tiny study, so it can compare every result file with what an
uninterrupted run made, byte for byte.
"""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from test_faults import results
from workflow_helpers import copy_project, env, run, wait_for

from bachglass import io

pytestmark = pytest.mark.slow
AGING = "results/aging/d1_w8_s0-1"  # the tiny study's longest training: the aging pack, 600 steps


def start(cmd: list[str], repo: Path) -> subprocess.Popen[str]:
    """Start ``cmd`` in ``repo`` in its own process group (as a shell or a batch system would)."""
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    return subprocess.Popen(cmd, cwd=repo, env=env(), start_new_session=True, **pipes)


def kill_when(repo: Path, condition, sig: signal.Signals) -> None:
    """Run the study and send its whole process group ``sig`` once ``condition()`` holds."""
    proc = start(["snakemake", "--cores", "2"], repo)
    ended = lambda: proc.communicate()[1][-2000:] if proc.poll() is not None else ""  # noqa: E731
    wait_for(condition.__doc__ or "the kill point", condition, proc, ended, interval=0.002)
    os.killpg(proc.pid, sig)
    proc.communicate()
    assert proc.returncode != 0
    time.sleep(1.0)  # SIGTERM: a training job saves its state at its next step, then stops
    for nc in (repo / "results").rglob("*.nc"):  # nothing truncated under a final name
        io.read_netcdf(nc)


def test_a_study_killed_while_training_resumes_and_ends_byte_identical(tiny_study, tmp_path):
    """The study's first run stopped twice mid-training, whole process group: a job cancelled (SIGTERM,
    also what SLURM sends at preemption or the time limit), then a node lost (SIGKILL)."""
    repo = copy_project(tmp_path)
    log = repo / "results/logs/train_aging_pack/d1_w8_s0-1.log"
    checkpoint = repo / AGING / "trajectory.s0.ckpt.pt"
    kill_when(repo, checkpoint.exists, signal.SIGTERM)
    saved = torch.load(checkpoint, weights_only=True)["counters"][0]
    assert (
        f"SIGTERM at step {saved} of 600: resumable state saved" in log.read_text()
    )  # not the periodic save

    def resumed_and_saved_again() -> bool:
        text = log.read_text() if log.exists() else ""
        return "resuming at step" in text and text.count("resumable state saved") >= 2

    kill_when(repo, resumed_and_saved_again, signal.SIGKILL)  # snakemake's lock stays behind
    assert f"resuming at step {saved}" in log.read_text()
    refused = run(["snakemake", "--cores", "2"], repo, check=False)  # ... and the next run says what to do
    assert refused.returncode != 0 and "It can be removed with the --unlock argument" in refused.stderr
    run(["snakemake", "--unlock"], repo)

    run(["snakemake", "--cores", "2"], repo)
    assert "resuming at step" in log.read_text()
    assert results(repo) == results(tiny_study)  # every result, byte for byte, as if never killed
    assert not [p.name for p in (repo / "results").rglob("*") if p.suffix in (".pt", ".tmp")]


def test_a_second_snakemake_on_the_same_results_is_refused_while_the_first_runs(tiny_study, tmp_path):
    repo = shutil.copytree(tiny_study, tmp_path / "repo", symlinks=True)
    uninterrupted = results(repo)
    first = start(["snakemake", "--cores", "1", "--forcerun", "train_aging_pack"], repo)
    locks = repo / ".snakemake/locks"
    wait_for(
        "the first snakemake's lock", lambda: locks.is_dir() and any(locks.iterdir()), first, interval=0.002
    )
    second = run(["snakemake", "--cores", "1", "--forcerun", "fit_study"], repo, check=False)
    assert second.returncode != 0
    assert "Directory cannot be locked" in second.stderr
    err = first.communicate()[1]
    assert first.returncode == 0, err[-2000:]
    assert results(repo) == uninterrupted


def test_two_dvc_repro_on_the_same_repo_refuse_shared_stages_and_agree_on_the_rest(tiny_study, tmp_path):
    """DVC's rwlock refuses a stage whose files another repro is writing; disjoint stages run, and agree."""
    repo = shutil.copytree(tiny_study, tmp_path / "repo", symlinks=True)
    run(["dvc", "commit", "--force", "--quiet"], repo)  # the snakemake-built study, recorded
    uninterrupted = results(repo)
    first = start(
        ["dvc", "repro", "--force", "--single-item", "train_pack@2-8-0", "extract_observables@2-8-0"], repo
    )
    trajectory = "results/runs/d2_w8_s0/trajectory.nc"
    wait_for(
        "the first repro to start that stage", lambda: not (repo / trajectory).exists(), first, interval=0.002
    )
    same = run(["dvc", "repro", "--force", "--single-item", "train_pack@2-8-0"], repo, check=False)
    assert same.returncode != 0
    assert f"{trajectory}' is busy, it is being blocked by" in same.stderr, same.stderr
    other = run(["dvc", "repro", "--force", "--single-item", "train_pack@1-2-0"], repo, check=False)
    err = first.communicate()[1]
    assert first.returncode == 0, err[-2000:]
    assert other.returncode == 0, other.stderr[-2000:]
    assert results(repo) == uninterrupted
    assert "Data and pipelines are up to date" in run(["dvc", "status"], repo).stdout
