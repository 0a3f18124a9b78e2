"""Faults injected into a finished tiny study: bad params, bad scores, bad downloads, a corrupt run file.

Each fault is run the way a user meets it, `snakemake --cores 2` in the study's directory: it must stop
with a non-zero exit and one line that names the culprit (no traceback), and leave every result that
was computed before it as it was, byte for byte. Where the fault was a changed config, taking it back
must leave nothing to do: no step re-runs for a fault that never got anywhere.
"""

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from music21 import converter, corpus
from workflow_helpers import TINY, copy_project, run

from bachglass import figures, io
from bachglass.params import deep_merge
from bachglass.trajectory import runs as trajectory_runs

pytestmark = pytest.mark.slow
SMK = ["snakemake", "--cores", "2"]
CHORALES = "results/data/chorales/chorales.json"
MANIFEST = "results/data/chorales/manifest.tsv"
RUN = "results/runs/d1_w2_s0"


def results(repo: Path) -> dict[str, str]:
    """SHA-256 of every result file (logs and benchmarks aside: each attempt writes its own)."""
    skip = ("results/logs/", "results/benchmarks/")
    files = (p for p in (repo / "results").rglob("*") if p.is_file())
    digests = {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    return {k: v for k, v in digests.items() if not k.startswith(skip)}


def score_file(tmp_path: Path, edit: Callable, name: str) -> Path:
    """A Bach chorale from music21's corpus, edited, written as MusicXML."""
    score = converter.parse(corpus.getWork("bwv101.7"))
    edit(score)
    return Path(score.write("musicxml", fp=tmp_path / name))


def own_scores(paths: list[Path]) -> dict:
    return {"data": {"source": "files", "files": {"paths": [str(p) for p in paths]}}}


def fault_unparsable(repo: Path, tmp_path: Path, server: SimpleNamespace) -> tuple[dict, str]:
    bad = tmp_path / "broken.musicxml"
    bad.write_text("<score-partwise><part id='P1'><measure><note>")
    return own_scores([bad]), f"{bad}: music21 cannot parse this score"


def fault_three_parts(repo: Path, tmp_path: Path, server: SimpleNamespace) -> tuple[dict, str]:
    path = score_file(tmp_path, lambda s: s.remove(s.parts[1]), "three.musicxml")
    return own_scores([path]), f"{path}: 3 parts, expected 4 (S, A, T, B)"


def fault_five_parts(repo: Path, tmp_path: Path, server: SimpleNamespace) -> tuple[dict, str]:
    import copy

    path = score_file(tmp_path, lambda s: s.insert(0, copy.deepcopy(s.parts[1])), "five.musicxml")
    return own_scores([path]), f"{path}: 5 parts, expected 4 (S, A, T, B)"


def fault_pitch_outside_midi(repo: Path, tmp_path: Path, server: SimpleNamespace) -> tuple[dict, str]:
    """A downloaded chorale in G major whose soprano opens on F#9 (MIDI 126): transposed up to C, 131."""
    g, c, d = [67, 62, 59, 43], [72, 64, 60, 48], [74, 66, 62, 50]
    body = json.dumps({"train": [[[126, 62, 59, 43]] * 4 + [g] * 4 + [c] * 4 + [d] * 4 + [g] * 4]}).encode()
    server.files["/high.json"] = body
    config = jsb_source(server, "/high.json", hashlib.sha256(body).hexdigest())
    config["encoding"] = {"transpose": "c_major_a_minor"}
    where = "chorales.json: chorale train000, voice S at quarter 0"
    return config, f"{where}: pitch 131 (126 transposed by +5) is outside MIDI 0-127"


def fault_empty_corpus(repo: Path, tmp_path: Path, server: SimpleNamespace) -> tuple[dict, str]:
    config = {"encoding": {"min_quarters": 300, "max_quarters": 301}}
    return config, "chorales lasts 300-301 quarters; widen encoding.min_quarters/encoding.max_quarters"


def jsb_source(server: SimpleNamespace, path: str, sha256: str) -> dict:
    url = {"url": server.base + path, "sha256": sha256, "steps_per_quarter": 4}
    return {"data": {"source": "url", "url": url | {"splits": ["train"]}}}


def fault_wrong_checksum(repo: Path, tmp_path: Path, server: SimpleNamespace) -> tuple[dict, str]:
    server.files["/jsb.json"] = json.dumps({"train": [[[60, 55, 52, 48]] * 16]}).encode()
    url = server.base + "/jsb.json"
    return jsb_source(server, "/jsb.json", "0" * 64), f"{url}: sha256 "


def fault_truncated_download(repo: Path, tmp_path: Path, server: SimpleNamespace) -> tuple[dict, str]:
    body = json.dumps({"train": [[[60, 55, 52, 48]] * 16]}).encode()
    server.files["/jsb.json"] = body
    server.truncate.add("/jsb.json")
    url = server.base + "/jsb.json"
    return jsb_source(server, "/jsb.json", hashlib.sha256(body).hexdigest()), f"{url}: download cut short"


def fault_corrupt_trajectory(repo: Path, tmp_path: Path, server: SimpleNamespace) -> tuple[dict, str]:
    """A run's trajectory.nc damaged on disk (not by us: we write atomically), newer than its observables."""
    (repo / RUN / "trajectory.nc").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4)
    return {}, f"{RUN}/trajectory.nc: not a readable NetCDF file"


# fault: (inject, results it may remove: the outputs that depend on the damaged file it planted)
FAULTS = {
    "params: unknown key": (
        lambda *_: ({"train": {"devcie": "cpu"}}, "params.yaml: train: Additional properties"),
        [],
    ),
    "params: wrong type": (
        lambda *_: ({"train": {"steps": "x"}}, "params.yaml: train.steps: 'x' is not of type 'integer'"),
        [],
    ),
    "params: negative width": (
        lambda *_: ({"grid": {"width": [-4]}}, "params.yaml: grid.width.0: -4 is less than the minimum of 1"),
        [],
    ),
    "params: empty grid": (
        lambda *_: ({"grid": {"seed": []}}, "params.yaml: grid.seed: [] should be non-empty"),
        [],
    ),
    "params: thresholds out of order": (
        lambda *_: (
            {"observables": {"eps": [0.5, 1.0]}},
            "params.yaml: observables.eps: [0.5, 1.0] is not in decreasing order",
        ),
        [],
    ),
    "unparsable MusicXML": (fault_unparsable, []),
    "chorale with 3 parts": (fault_three_parts, []),
    "chorale with 5 parts": (fault_five_parts, []),
    "note outside the vocabulary": (fault_pitch_outside_midi, []),
    "empty corpus after filtering": (fault_empty_corpus, []),
    "download: wrong checksum": (fault_wrong_checksum, []),
    "download: truncated body": (fault_truncated_download, []),
    # Snakemake deletes a job's outputs before it runs it: this run's observables, made from the file
    # that is now damaged, go (a rerun of its training makes both again)
    "corrupt trajectory.nc": (fault_corrupt_trajectory, [f"{RUN}/observables.nc"]),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_fault_stops_with_one_line_naming_it_and_loses_nothing(tiny_study, tmp_path, server, fault):
    inject, removed = FAULTS[fault]
    repo = shutil.copytree(tiny_study, tmp_path / "repo", symlinks=True)
    config, message = inject(repo, tmp_path, server)
    before = results(repo)  # the fault itself may be a damaged result file
    args = []
    if config:
        (tmp_path / "fault.yaml").write_text(yaml.safe_dump(config))
        args = ["--configfile", str(tmp_path / "fault.yaml")]
    proc = run([*SMK, *args], repo, check=False)
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if message in line]
    assert len(ours) >= 1 and all(line.count(message) == 1 for line in ours), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    after = results(repo)
    assert {k: v for k, v in before.items() if k not in removed} == {
        k: after.get(k) for k in before if k not in removed
    }
    assert set(before) - set(after) == set(removed)
    new = set(after) - set(before)  # a download, or what the data step that succeeded staged
    assert all(
        k.startswith("results/data/.staging/") or (k.endswith(".json") and "/chorales/" in k) for k in new
    ), new
    assert not [p for p in (repo / "results").rglob("*.tmp")]  # no half-written file left
    if config:  # the config taken back: nothing to redo
        assert "Nothing to be done" in run(["snakemake", "-n"], repo).stdout


def test_a_diverging_run_stops_is_masked_and_left_out_and_the_study_completes(tmp_path):
    """lr 1e38 without clipping: the width-8 nets overflow within a few steps and stop, the width-2 ones
    do not overflow; they train on, and count as diverged only if their loss goes back above its start."""
    tiny = yaml.safe_load(TINY.read_text())
    repo = copy_project(tmp_path, deep_merge(tiny, {"train": {"lr": 1e38, "clip_norm": None}}))
    run([*SMK], repo)
    excluded = []
    for d in (1, 2):
        for w in (2, 8):
            run_dir = repo / f"results/runs/d{d}_w{w}_s0"
            (trajectory,) = trajectory_runs(io.read_netcdf(run_dir / "trajectory.nc"))  # a pack of one
            observables = io.read_netcdf(run_dir / "observables.nc").squeeze(("depth", "width", "seed"))
            k = trajectory.attrs["diverged_step"]
            assert trajectory.attrs["status"] == ("diverged" if w == 8 else "completed")
            first = expected_divergence(trajectory)
            assert bool(observables["diverged"]) == (first >= 0)
            assert int(observables["diverged_step"]) == first
            if first >= 0:
                excluded.append(f"d{d}_w{w}_s0 (diverged at step {first})")
            if w == 8:
                after = trajectory["step"] >= k
                assert 0 < k < 10 and trajectory["loss"].where(after).isnull().all()
                assert observables["msd"].where(observables["step"] >= k).isnull().all()
                assert observables["tau"].isnull().all()  # never reached before it diverged: invalid, not inf
            else:
                assert trajectory["loss"].notnull().all()
    excluded += [f"aging d1_w8_s{s} (diverged at step {k})" for s, k in aging_divergence(repo)]
    fits = io.read_netcdf(repo / "results/fits.nc")
    assert fits.attrs["excluded_runs"] == "; ".join(excluded)
    assert json.loads((repo / "metrics.json").read_text())["excluded_runs"] == excluded
    assert (
        f"left out of every fit: {'; '.join(excluded)}" in (repo / "results/logs/fit_study.log").read_text()
    )
    table = (repo / "results/science_checks.md").read_text()
    assert f"Left out of every fit (diverged): {'; '.join(excluded)}." in table
    assert all((repo / f"results/figures/{name}.png").stat().st_size > 0 for name in figures.FIGURES)


def expected_divergence(trajectory) -> int:
    """The first step at which a run's loss became NaN (the trainer stopped it) or went back above its
    initial value (it trained on), -1 if neither: the criterion, computed here on its own."""
    loss, step = trajectory["loss"].values.ravel(), trajectory["step"].values
    candidates = list(step[loss > loss[0]][:1])
    if trajectory.attrs["status"] == "diverged":
        candidates.append(int(trajectory.attrs["diverged_step"]))
    return int(min(candidates)) if candidates else -1


def aging_divergence(repo: Path) -> list[tuple[int, int]]:
    """(seed, diverged step) of the aging subset's runs that diverged."""
    steps = []
    pack = io.read_netcdf(repo / "results/aging/d1_w8_s0-1/trajectory.nc")
    for seed, trajectory in zip((0, 1), trajectory_runs(pack), strict=True):
        first = expected_divergence(trajectory)
        if first >= 0:
            steps.append((seed, first))
    return steps
