"""Results shared through real DVC remotes: a local directory, and an SSH server on 127.0.0.1 (dvc-ssh).

The SSH server is the one tests/services/with-services.sh starts (`make test` as root on Debian); without it
the SSH cases are skipped and say why.
"""

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import xarray as xr
from workflow_helpers import DOWNSTREAM_OF_TRAIN, TINY_TRAIN_STAGES, edit_params, git_commit, run

pytestmark = pytest.mark.slow
SSH = os.environ.get("BACHGLASS_SSH_PORT")
NO_SSH = os.environ.get(
    "BACHGLASS_SERVICES_SKIPPED",
    "no test sshd: run the suite with `make test` (tests/services/with-services.sh starts one, as root)",
)


class Remote:
    """A DVC remote as a user sets it up: the URL goes into git (.dvc/config), credentials stay local."""

    def __init__(self, kind: str, where: Path) -> None:
        self.kind, self.where = kind, where
        if kind == "local":
            self.url = str(where)
        else:  # (dvc-ssh checks no host key: sshfs passes known_hosts=None to asyncssh; docs/dvc.md)
            host, user = os.environ["BACHGLASS_SSH_HOST"], os.environ["BACHGLASS_SSH_USER"]
            self.url = f"ssh://{user}@{host}:{SSH}{where}"

    def add(self, repo: Path) -> None:
        run(["dvc", "remote", "add", "-d", "shared", self.url], repo)
        self.configure(repo)

    def configure(self, repo: Path) -> None:
        """What each user does in their own clone: the private key, in .dvc/config.local (not in git)."""
        if self.kind == "ssh":
            key = os.environ["BACHGLASS_SSH_KEY"]
            run(["dvc", "remote", "modify", "--local", "shared", "keyfile", key], repo)

    def dvc(self, args: list[str], repo: Path, check: bool = True):
        return run(["dvc", *args], repo, check=check)


@pytest.fixture(params=["local", pytest.param("ssh", marks=pytest.mark.skipif(not SSH, reason=NO_SSH))])
def remote(request, tmp_path) -> Remote:
    return Remote(request.param, tmp_path / "remote")


def test_results_pushed_after_a_snakemake_run_are_current_in_a_clone(tiny_study, tmp_path, remote):
    """snakemake -> dvc commit + push -> git clone + dvc pull: identical bytes, clean status; an lr edit in
    the clone makes the training stages stale (never reported current), and dvc repro re-runs exactly them
    and what depends on them, with the new lr in every result."""
    origin = tmp_path / "origin"
    shutil.copytree(tiny_study, origin)
    remote.add(origin)
    run(["dvc", "commit", "--force", "--quiet"], origin)
    assert run(["dvc", "status", "--quiet"], origin, check=False).returncode == 0
    # dvc commit must not reorder mtimes (hardlink cache): judged by mtime alone, nothing is stale
    dry = run(["snakemake", "-n", "--max-checksum-file-size", "1"], origin).stdout
    assert "Nothing to be done" in dry, dry
    git_commit(origin, "results")
    remote.dvc(["push", "--quiet"], origin)
    assert len(list((tmp_path / "remote").rglob("*"))) > 20  # the objects are on the remote's side
    assert remote.dvc(["status", "--cloud", "--quiet"], origin, check=False).returncode == 0

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(origin), str(clone)], tmp_path)
    remote.configure(clone)
    remote.dvc(["pull", "--quiet"], clone)
    assert run(["dvc", "status", "--quiet"], clone, check=False).returncode == 0
    tracked = sorted(p.relative_to(origin) for p in (origin / "results").rglob("*.nc"))
    # encoded; trajectory, observables per seed pack (grid 4, aging 1, Langevin 2); study, aging,
    # langevin, fits; stability scan cells (1 width x 2 batch sizes) and stability.nc; floor runs (2
    # settings, 1 restart)
    assert len(tracked) == 1 + 2 * (4 + 1 + 2) + 4 + (2 + 1) + 3
    for rel in tracked:
        assert (clone / rel).read_bytes() == (origin / rel).read_bytes(), rel

    edit_params(clone, {"train": {"lr": 0.07}})  # the default is 0.1
    stale = set(json.loads(run(["dvc", "status", "--json"], clone).stdout))
    assert stale == TINY_TRAIN_STAGES, stale  # DVC lists the stages whose own params changed
    ran = re.findall(r"Running stage '([^']+)'", run(["dvc", "repro"], clone).stdout)
    assert sorted({s.split("@")[0] for s in ran}) == sorted(
        [*DOWNSTREAM_OF_TRAIN, "train_aging_pack", "train_langevin_pack", "train_pack"]
    )
    assert {s for s in ran if s.startswith("train")} == TINY_TRAIN_STAGES
    # no upstream job ran inside a stage's Snakemake call, whatever the mtimes after the pull
    assert sorted(p.name for p in (clone / "results/logs").iterdir()) == [
        "check_science.log",
        "combine_aging.log",
        "combine_langevin.log",
        "combine_study.log",
        "extract_aging_observables",
        "extract_langevin_observables",
        "extract_observables",
        "fit_study.log",
        "plot_figures.log",
        "propose_widths.log",
        "train_aging_pack",
        "train_langevin_pack",
        "train_pack",
    ]
    # the stale-result trap (a wrapped Snakemake keeping pulled results under a new lr): every result is new
    for rel in tracked:
        if "trajectory" in str(rel):
            with xr.open_dataset(clone / rel) as ds:
                assert ds.attrs["lr"] == 0.07, rel
        same = (clone / rel).read_bytes() == (origin / rel).read_bytes()
        # unchanged: the encoding (upstream of train) and what takes no train.lr (the stability scan and the
        # floor runs set their own lr)
        independent = rel.name in ("encoded.nc", "stability.nc") or rel.parts[1] in ("stability", "sgd_floor")
        assert same == independent, rel
    assert run(["dvc", "status", "--quiet"], clone, check=False).returncode == 0


def test_one_run_is_pulled_alone(tiny_study, tmp_path, remote):
    """`dvc pull train_pack@1-8-0` in a fresh clone fetches that pack's trajectory and nothing else."""
    origin = tmp_path / "origin"
    shutil.copytree(tiny_study, origin)
    remote.add(origin)
    run(["dvc", "commit", "--force", "--quiet"], origin)
    git_commit(origin, "results")
    remote.dvc(["push", "--quiet"], origin)

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(origin), str(clone)], tmp_path)
    remote.configure(clone)
    remote.dvc(["pull", "--quiet", "train_pack@1-8-0"], clone)
    pulled = sorted(str(p.relative_to(clone)) for p in (clone / "results").rglob("*") if p.is_file())
    assert pulled == ["results/runs/d1_w8_s0/trajectory.nc"]
    rel = "results/runs/d1_w8_s0/trajectory.nc"
    assert (clone / rel).read_bytes() == (origin / rel).read_bytes()
