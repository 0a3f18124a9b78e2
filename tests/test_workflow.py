"""The workflow as users run it: lint, the Snakemake/DVC agreement, a tiny study end to end."""

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from workflow_helpers import ROOT, TINY_TRAIN_STAGES, copy_project, edit_params, git_commit, run

from bachglass import adaptive, figures, floor_runs

pytestmark = pytest.mark.slow
SMK = ["snakemake", "--cores", "2"]


def dvc_stages(repo: Path) -> dict[str, dict]:
    """DVC's own view of dvc.yaml (matrix resolved): stage name -> cmd, deps, outs, params."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc:
        stages = {}
        for stage in dvc.index.stages:
            params = {key for dep in stage.deps if hasattr(dep, "params") for key in dep.params}
            stages[stage.name] = {
                "cmd": stage.cmd,
                "deps": {str(Path(d.def_path)) for d in stage.deps if not hasattr(d, "params")},
                "outs": {str(Path(o.def_path)) for o in stage.outs},
                "params": params,
            }
    return stages


def snakemake_jobs(repo: Path) -> dict[str, dict]:
    """Snakemake's DAG for `all` from a dry run: output file -> rule and input files."""
    out = run(["snakemake", "-n", "--forceall"], repo).stdout
    jobs: dict[str, dict] = {}
    for block in re.split(r"\n(?=rule \w+:)", out):
        rule = re.match(r"rule (\w+):", block)
        outputs = re.search(r"^\s+output: (.*)$", block, re.M)
        if not rule or not outputs:
            continue
        inputs = re.search(r"^\s+input: (.*)$", block, re.M)
        for f in outputs.group(1).split(", "):
            jobs[f] = {"rule": rule.group(1), "inputs": set(inputs.group(1).split(", ")) if inputs else set()}
    # a data step's staged outputs live only inside its stage, until publish_data moves them into place
    staged = {f for f in jobs if f.startswith("results/data/.staging/")}
    return {f: j | {"inputs": j["inputs"] - staged} for f, j in jobs.items() if f not in staged}


# The one lint left on purpose: the jobs run in the locked venv, not in conda envs (docs/development.md).
ACCEPTED_LINTS = {"Specify a conda environment or container for each rule."}


def test_snakemake_lint_finds_nothing_but_the_deliberate_absence_of_conda_envs():
    proc = run(["snakemake", "--lint"], ROOT, check=False)
    lints = set(re.findall(r"^ {4}\* (.+?):?$", proc.stdout + proc.stderr, re.M))
    assert lints <= ACCEPTED_LINTS, proc.stdout + proc.stderr
    assert proc.returncode == (1 if lints else 0), proc.stderr


def test_dvc_stages_ask_snakemake_for_exactly_their_outs(tmp_path):
    """Every DVC stage's outs are the files its Snakemake targets build, and together they are the DAG."""
    repo = copy_project(tmp_path)
    stages, jobs = dvc_stages(repo), snakemake_jobs(repo)
    rule_of_target = {}
    for name, stage in stages.items():
        words = stage["cmd"].split()
        targets = words[1 : next(i for i, w in enumerate(words) if w.startswith("--"))]
        built = set()
        for target in targets:
            # a target is a file or a rule name; a rule name builds all that rule's files
            built |= {f for f, j in jobs.items() if target in (f, j["rule"])}
        covered = {f for f in jobs if any(f == o or f.startswith(o + "/") for o in stage["outs"])}
        assert built == covered, f"{name}: targets build {built}, outs cover {covered}"
        # a stage is named after the rule that makes its outs
        assert {jobs[f]["rule"] for f in built} == {name.split("@")[0]}, name
        for f in built:
            rule_of_target[f] = name
            # a combine stage depends on its runs' folder (results/runs, results/aging, ...) as a whole
            runs = (
                "results/runs/",
                "results/aging/",
                "results/langevin/",
                "results/stability/",
                "results/sgd_floor/",
            )
            deps = {i for i in jobs[f]["inputs"] if not i.startswith(runs)}
            assert deps <= stage["deps"], f"{name}: Snakemake inputs {deps - stage['deps']} not in deps"
        # the library code of a stage is its rules' (the imports of their scripts), not a list of its own
        code = {i for f in built for i in jobs[f]["inputs"] if i.startswith("src/")}
        assert {d for d in stage["deps"] if d.startswith("src/")} == code, (
            f"{name}: python workflow/dvc_code.py"
        )
        # common.smk builds the rules' params (the aging and Langevin sections) and paths: rule code too
        assert "workflow/rules/common.smk" in stage["deps"], name
    assert set(rule_of_target) == set(jobs), f"not built by any stage: {set(jobs) - set(rule_of_target)}"


def test_git_tracks_nothing_under_results():
    """Results belong to DVC (git tracks dvc.lock, and metrics.json beside it)."""
    tracked = subprocess.run(
        ["git", "ls-files", "results"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert tracked.stdout == ""


def test_dvc_code_writes_each_stages_modules_and_finds_dvc_yaml_current():
    spec = importlib.util.spec_from_file_location("dvc_code", ROOT / "workflow/dvc_code.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    text = (ROOT / "dvc.yaml").read_text()
    assert tool.synced(text) == (text, [])
    stale = text.replace("      - src/bachglass/sgd.py\n", "", 1)  # the first stage that runs sgd.py
    assert tool.synced(stale) == (text, ["train_pack"])


def test_dvc_params_sections_match_the_rules_params(tmp_path):
    repo = copy_project(tmp_path)
    # the floor runs share the study's dynamics: every train key but their own
    train_keys = set(yaml.safe_load((ROOT / "params.yaml").read_text())["train"]) - set(floor_runs.OWN_KEYS)
    expected = {
        "publish_data": {"data", "encoding"},
        "train_pack": {"train"},
        "extract_observables": {"observables", "probes"},
        "combine_study": {"grid"},
        "train_aging_pack": {"train", "aging.steps"},
        "extract_aging_observables": {"observables", "probes", "aging.tau_w"},
        "combine_aging": {"aging.depth", "aging.width", "aging.seed"},
        "train_langevin_pack": {"train", "langevin.steps"},
        "extract_langevin_observables": {"observables", "probes", "langevin.tau_w"},
        "combine_langevin": {"langevin.depth", "langevin.width", "langevin.seed", "langevin.temperature"},
        "scan_stability": {"stability", "train.cell", "train.dtype", "train.device"},
        **{
            stage: {*(f"sgd_floor.{k}" for k in keys), *(f"train.{k}" for k in train_keys)}
            for stage, keys in (
                ("train_floor", floor_runs.SETTING_KEYS),
                ("restart_floor", floor_runs.RESTART_KEYS),
            )
        },
        "combine_stability": {"stability.depth", "stability.width", "stability.batch_size"},
        "fit_study": {"fits", "observables", "phases", "sgd_floor"},
        "propose_widths": {"grid", "adaptive"},
        "check_science": set(),
        "plot_figures": {"figures"},
    }
    for name, stage in dvc_stages(repo).items():
        assert stage["params"] == expected[name.split("@")[0]], name
    for rule_file, sections in {
        "data": {"data", "encoding"},
        "train": {"train"},  # aging's and langevin's own train params: common.smk
        "observables": {"observables", "probes", "grid"},
        "langevin": {"probes"},
        "analysis": {"fits", "observables", "phases", "grid", "adaptive", "figures", "sgd_floor"},
        "sgd_floor": {"sgd_floor", "train"},
        "stability": {"stability", "train"},
    }.items():
        text = (ROOT / f"workflow/rules/{rule_file}.smk").read_text()
        assert set(re.findall(r'config\["(\w+)"\]', text)) == sections, rule_file


def test_tiny_study_has_labelled_dims_units_and_provenance(tiny_study):
    with xr.open_dataset(tiny_study / "results/study.nc") as study:
        for dim in ("depth", "width", "seed", "time", "eps", "tau_w"):
            assert dim in study.dims
        assert study["loss"].dims == ("depth", "width", "seed", "time")
        assert study["loss"].attrs["units"] == "nat per note"
        assert "params_sha256" in study.attrs and "code_sha256" in study.attrs
        assert study.sizes["depth"] == 2 and study.sizes["width"] == 2
        assert np.isfinite(study["loss"]).all()


def test_each_variable_has_one_long_name_and_unit_in_every_file(tiny_study):
    """Every variable and coordinate the study writes is labelled, and alike wherever it appears."""
    seen: dict[str, tuple] = {}
    for path in sorted((tiny_study / "results").rglob("*.nc")):
        if path.parent.name == "data":  # the encoded chorales: a score's step is not an SGD step
            continue
        with xr.open_dataset(path) as ds:
            here = path.relative_to(tiny_study)
            for name, var in ds.variables.items():
                label = (var.attrs.get("long_name"), var.attrs.get("units"))
                assert label[0], f"{here}: {name} has no long_name"
                where, first = seen.setdefault(name, (here, label))
                assert label == first, f"{name}: {label} in {here}, {first} in {where}"


def test_tiny_study_writes_every_figure(tiny_study):
    for name in figures.FIGURES:
        assert (tiny_study / f"results/figures/{name}.png").stat().st_size > 5_000, name


def test_tiny_study_leaves_no_checkpoints_or_temp_files(tiny_study):
    leftovers = [*tiny_study.glob("results/**/*.tmp"), *tiny_study.glob("results/**/*.ckpt.pt")]
    assert leftovers == []


def test_headline_numbers_reads_a_computed_study(tiny_study):
    """The script that re-reads the docs' numbers runs on a real results folder and counts its runs."""
    script = ROOT / "experiments/headline_numbers.py"
    out = subprocess.run(
        [sys.executable, script, tiny_study / "results"], capture_output=True, text=True, check=True
    ).stdout
    with xr.open_dataset(tiny_study / "results/study.nc") as study:
        n_runs = study.loss.isel(time=0).size
    assert f"study.nc: {n_runs} runs" in out
    assert "kappa" in out and "restart x0.5" in out and "power-law L_inf at the data floor" in out


def test_rerun_is_a_no_op_and_outputs_are_reproducible(tiny_study, tmp_path):
    assert "Nothing to be done" in run(["snakemake", "-n"], tiny_study).stdout
    tiny_study = shutil.copytree(tiny_study, tmp_path / "repo")  # the forced re-run stays in the copy
    traj = "results/runs/d2_w8_s0/trajectory.nc"
    first = (tiny_study / traj).read_bytes()
    run([*SMK, traj, "--force"], tiny_study)
    assert (tiny_study / traj).read_bytes() == first


def test_bad_params_stop_with_one_line_naming_the_key(tiny_study, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: {width: [-4]}\n")
    proc = run(["snakemake", "-n", "--configfile", str(bad)], tiny_study, check=False)
    assert proc.returncode != 0
    assert "params.yaml: grid.width.0: -4 is less than the minimum of 1" in proc.stderr


def test_dvc_repro_reruns_exactly_what_an_edit_touches(tmp_path):
    """dvc repro builds the tiny study; a plot edit re-runs no training, an lr edit makes exactly the
    training stages stale, an appended width only its own stages."""
    repo = copy_project(tmp_path)
    run(["dvc", "repro", "--quiet"], repo)
    assert (repo / "results/study.nc").exists() and (repo / "dvc.lock").exists()
    assert run(["dvc", "status", "--quiet"], repo, check=False).returncode == 0
    assert "Nothing to be done" in run(["snakemake", "-n"], repo).stdout
    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)
    shown = metrics[""]["data"]["metrics.json"]["data"]
    assert {"data_floor", "d1", "d2"} <= set(shown) and "clipped_fraction_max" in shown[
        "d1"
    ]  # (DVC hides nulls)
    traj = repo / "results/runs/d1_w8_s0/trajectory.nc"
    before = traj.read_bytes()
    git_commit(repo, "the tiny study")  # metrics.json (beside dvc.lock) is in git, not in DVC's cache

    edit_params(repo, {"figures": {"dpi": 70}})
    log = run(["dvc", "repro"], repo).stdout
    assert re.findall(r"Running stage '([^']+)'", log) == ["plot_figures"]
    assert traj.read_bytes() == before
    git_commit(repo, "figures at 70 dpi")
    edit_params(repo, {"fits": {"aging_tau_w_min": 10}})  # the aging collapse without its shortest tau_w
    log = run(["dvc", "repro"], repo).stdout
    ran = re.findall(r"Running stage '([^']+)'", log)
    assert sorted(ran) == ["check_science", "fit_study", "plot_figures", "propose_widths"], ran
    git_commit(repo, "aging collapse from tau_w = 10")
    # two commits compared: the collapse metrics that changed, the figures of each
    diff = json.loads(run(["dvc", "metrics", "diff", "HEAD~1", "HEAD", "--json"], repo).stdout)
    changed = diff.get("metrics.json", {})
    assert changed and all(".S_" in key or ".mu" in key for key in changed), diff
    plots = json.loads(run(["dvc", "plots", "diff", "HEAD~2", "HEAD~1", "--json"], repo).stdout)["data"]
    images = plots["results/figures/loss_curves.png"]  # one per revision, rendered from DVC's cache
    assert {rev for image in images for rev in image["revisions"]} == {"HEAD~2", "HEAD~1"}, plots

    edit_params(repo, {"train": {"lr": 0.07}})  # the default is 0.05
    status = run(["dvc", "status", "--json"], repo).stdout
    stale = set(yaml.safe_load(status))  # DVC lists the stages whose own deps/params changed
    assert stale == TINY_TRAIN_STAGES, stale  # (the re-run itself: tests/test_remotes.py, after a pull)
    edit_params(repo, {"train": {"lr": yaml.safe_load((ROOT / "params.yaml").read_text())["train"]["lr"]}})
    assert run(["dvc", "status", "--quiet"], repo, check=False).returncode == 0
    # the floor's fit window is analysis only: the floor runs stay as trained
    window = yaml.safe_load((repo / "params.yaml").read_text())["sgd_floor"]["window_start"]
    edit_params(repo, {"sgd_floor": {"window_start": window + 1}})
    assert set(yaml.safe_load(run(["dvc", "status", "--json"], repo).stdout)) == {"fit_study"}
    edit_params(repo, {"sgd_floor": {"window_start": window}})

    # adaptive widths: a width appended to grid.width makes that width's stages new, no other run stale
    adaptive.apply_proposals(repo / "params.yaml", [5], schema=repo / "workflow/schemas/params.schema.yaml")
    stale = set(yaml.safe_load(run(["dvc", "status", "--json"], repo).stdout))
    new = {f"{stage}@{d}-5-0" for stage in ("train_pack", "extract_observables") for d in (1, 2)}
    assert stale == new | {"combine_study", "propose_widths"}, stale  # (their own params: grid)


def test_bad_score_stops_the_step_with_one_line_naming_the_file(tiny_study, tmp_path):
    """A user's score with 3 parts: the step exits non-zero, says why in one line, keeps the results."""
    from music21 import converter, corpus

    tiny_study = shutil.copytree(tiny_study, tmp_path / "repo")
    score = converter.parse(corpus.getWork("bwv101.7"))
    score.remove(score.parts[1])
    path = Path(score.write("musicxml", fp=tmp_path / "three_parts.musicxml"))
    config = tmp_path / "files.yaml"
    config.write_text(yaml.safe_dump({"data": {"source": "files", "files": {"paths": [str(path)]}}}))
    before = (tiny_study / "results/study.nc").read_bytes()
    proc = run([*SMK, "results/data/chorales/chorales.json", "--configfile", str(config)], tiny_study, False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "error: " in line]
    assert any(f"{path}: 3 parts, expected 4 (S, A, T, B)" in line for line in errors), proc.stderr
    assert (tiny_study / "results/study.nc").read_bytes() == before
    assert not (tiny_study / "results/data/chorales/chorales.json.tmp").exists()


def test_every_rule_of_the_dag_is_named_in_the_source_and_nothing_reaches_into_snakemake():
    """No generated rules: each rule `snakemake -n` schedules is a `rule` or `use rule` line of workflow/."""
    out = run(["snakemake", "-n", "--forceall", "--quiet", "rules"], ROOT).stdout
    scheduled = set(re.findall(r"^(\w+)\s+\d+$", out, re.M)) - {"job", "total"}
    source = "\n".join(p.read_text() for p in [ROOT / "Snakefile", *(ROOT / "workflow/rules").glob("*.smk")])
    declared = set(re.findall(r"^(?:use )?rule (\w+)", source, re.M))
    declared |= set(re.findall(r"^use rule \w+ as (\w+)", source, re.M))
    assert scheduled and scheduled <= declared, scheduled - declared
    for path in [*(ROOT / "workflow").rglob("*.*"), *(ROOT / "src").rglob("*.py"), ROOT / "Snakefile"]:
        text = path.read_text() if path.suffix in (".py", ".smk", ".yaml", "") else ""
        assert "_parsed_overwrite" not in text and "train_cache" not in text, path


def test_a_new_seed_pack_trains_only_its_own_runs(tiny_study, tmp_path):
    repo = shutil.copytree(tiny_study, tmp_path / "repo")
    edit_params(repo, {"grid": {"seed": [0, "1-2"]}})
    out = run(["snakemake", "-n", "--quiet", "rules"], repo).stdout
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", out, re.M))
    assert jobs["train_pack"] == "4" and jobs["extract_observables"] == "4", out  # 1-2 of each (d, w)
    dry = run(["snakemake", "-n"], repo).stdout
    assert "d1_w8_s1-2/trajectory.nc" in dry and "d1_w8_s0/trajectory.nc" not in dry  # pack 0 stays


def test_appended_widths_train_only_the_new_runs(tiny_study, tmp_path):
    """`python -m bachglass.adaptive --apply` edits grid.width; the next pass trains the new width only."""
    repo = shutil.copytree(tiny_study, tmp_path / "repo")
    adaptive.apply_proposals(repo / "params.yaml", [5], schema=repo / "workflow/schemas/params.schema.yaml")
    out = run(["snakemake", "-n", "--quiet", "rules"], repo).stdout
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", out, re.M))
    assert jobs["train_pack"] == "2" and jobs["extract_observables"] == "2", out  # (1, 5) and (2, 5)
    assert not any(rule.startswith(("train_aging", "train_langevin", "extract_aging")) for rule in jobs), out
    assert {"combine_study", "fit_study", "propose_widths", "plot_figures"} <= set(jobs), out
