"""The study on a live SLURM cluster through `snakemake --profile slurm`, as users run it on theirs.

The cluster is the single-node one tests/services/with-services.sh starts (`make test` as root on Debian):
slurmctld, slurmd and slurmdbd with accounting, and two GPUs declared as a GRES. The jobs see no CUDA device,
so the tiny study says train.device: cpu, as a user of such a node would: with auto, a job that SLURM gave a
GPU stops rather than train on the CPU (bachglass.device). Elsewhere the live tests are skipped and say why.
"""

import json
import os
import re
import shutil
import signal
import subprocess
from functools import partial
from pathlib import Path

import pytest
import xarray as xr
import yaml
from workflow_helpers import NO_LANGEVIN, ROOT, copy_project, edit_params, env, run, wait_for

LIVE = os.environ.get("BACHGLASS_SLURM")
NO_SLURM = os.environ.get(
    "BACHGLASS_SERVICES_SKIPPED",
    "no test cluster: run the suite with `make test` (tests/services/with-services.sh starts one, as root)",
)
# What a user adapts to their site (the slurm profile's ADAPT lines) and what makes a 2-core CI node quick.
# Everything else in the profiles is used as shipped.
TEST_DEFAULTS = {"slurm_partition": "debug", "slurm_account": "ci", "mem_mb": 1000, "runtime": 10}
# distinct per family, so that sacct shows each family's settings reached its own jobs
TEST_SIZES = {
    "train_pack": {"mem_mb": 1100, "runtime": 7},
    "train_aging_pack": {"mem_mb": 1200, "runtime": 9},
    "train_langevin_pack": {"mem_mb": 1300, "runtime": 8},
    "train_floor": {"mem_mb": 1400, "runtime": 6},
    "restart_floor": {"mem_mb": 1500, "runtime": 5},
}
TEST_SETTINGS = {"jobs": 4, "latency-wait": 5, "retries": 0, "slurm-init-seconds-before-status-checks": 2}


def profile(name: str) -> dict:
    return yaml.safe_load((ROOT / name / "config.yaml").read_text())


def test_the_no_accounting_profile_is_the_slurm_profile_polled_with_squeue():
    assert profile("slurm-squeue") == profile("slurm") | {"slurm-status-command": "squeue"}


def test_the_slurm_profile_gives_every_training_job_a_gpu(tmp_path):
    """The profile names the training rules themselves; every training job gets their GPU and sizes."""
    repo = copy_project(tmp_path)
    out = run(["snakemake", "-n", "--profile", "slurm", "--forceall"], repo).stdout
    jobs = re.findall(r"^rule (\w+):\n(?:\s+.*\n)*?\s+resources: (.*)$", out, re.M)
    trained = {rule for rule, _ in jobs if rule.startswith("train") or rule == "restart_floor"}
    settings = profile("slurm")["set-resources"]
    assert trained == set(TEST_SIZES) == {rule for rule, wanted in settings.items() if wanted.get("gpu")}
    for rule, resources in jobs:
        res = dict(item.split("=", 1) for item in resources.split(", "))
        if rule in trained:
            wanted = settings[rule]
            assert res["gpu"] == "1" and res["slurm_partition"] == wanted["slurm_partition"], rule
            assert res["runtime"] == str(wanted["runtime"]), rule
        else:
            assert "gpu" not in res, rule


def site_profile(repo: Path, name: str) -> None:
    """Adapt the copy's profile `name` to the test cluster, as docs/slurm.md tells a user to."""
    path = repo / name / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["default-resources"] |= TEST_DEFAULTS
    for rule, resources in config["set-resources"].items():
        sizes = TEST_SIZES.get(rule, {"mem_mb": 1000})
        resources |= {"slurm_partition": "debug"} | sizes
    path.write_text(yaml.safe_dump(config | TEST_SETTINGS, sort_keys=False))


def snakemake_on_slurm_cmd(name: str, *targets: str) -> list[str]:
    # timeout -k: Snakemake can ignore SIGTERM while it waits on jobs it lost track of
    # (--foreground: Ctrl-C reaches Snakemake, which then cancels its SLURM jobs)
    return ["timeout", "--foreground", "-k", "30", "900", "snakemake", *targets, "--profile", name]


def snakemake_on_slurm(repo: Path, name: str, *targets: str) -> subprocess.CompletedProcess[str]:
    return run(snakemake_on_slurm_cmd(name, *targets), repo, check=False)


def accounting(job_ids: list[str]) -> dict[str, dict[str, str]]:
    """sacct's record of jobs: id -> State, AllocTRES, ReqMem, Timelimit, NodeList."""
    fields = ["JobID", "State", "AllocTRES", "ReqMem", "Timelimit", "NodeList"]
    out = subprocess.run(
        ["sacct", "-X", "-P", "-n", "-j", ",".join(job_ids), "-o", ",".join(fields)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines()]
    return {row["JobID"]: row for row in rows}


def slurm_jobs(repo: Path) -> dict[str, dict]:
    """SLURM job id -> rule and output files, from the plugin's job logs (SLURM's --output of each job,
    results/logs/slurm/rule_<rule>/<wildcards>/<id>.log), which show the job's Snakemake report."""
    jobs = {}
    for log in (repo / "results/logs/slurm").glob("rule_*/**/*.log"):
        outputs = re.search(r"^\s+output: (.*)$", log.read_text(), re.M)
        rule = log.relative_to(repo / "results/logs/slurm").parts[0].removeprefix("rule_")
        jobs[log.stem] = {"rule": rule, "outputs": outputs.group(1).split(", ") if outputs else []}
    return jobs


@pytest.fixture(scope="module")
def cluster_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A copy of the project that has run the tiny study with `snakemake --profile slurm` on the cluster."""
    repo = copy_project(tmp_path_factory.mktemp("slurm"))
    site_profile(repo, "slurm")
    proc = snakemake_on_slurm(repo, "slurm")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return repo, proc.stdout + proc.stderr


live = pytest.mark.skipif(not LIVE, reason=NO_SLURM)


@live
@pytest.mark.slow
def test_every_job_of_the_study_ran_inside_slurm(cluster_study):
    repo, log = cluster_study
    jobs = slurm_jobs(repo)
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", log)
    # every job but `all` and publish_data (the grid: 4 packs trained and extracted, 1 combine; aging: 1
    # pack, 1 combine; the Langevin sweep: 2 packs, 1 combine; the stability scan: 2 cells, 1 combine; the
    # floor: 2 settings, 1 restart; get_chorales, encode_chorales, fit, check, figures, widths)
    assert sorted(jobs) == sorted(submitted) and len(jobs) == 9 + 3 + 5 + 3 + 3 + 6
    records = accounting(list(jobs))
    assert {r["State"] for r in records.values()} == {"COMPLETED"}, records
    # every result file was written by exactly one SLURM job (the job id is kept out of the NetCDF attrs,
    # which are the same bytes wherever they were computed: docs/science.md Conventions)
    made_by = [path for job in jobs.values() for path in job["outputs"]]
    # a data step's job writes to a staging folder; publish_data (a localrule) moves the files into place
    made_by = [re.sub(r"^results/data/\.staging/[^/]+/", "results/data/", path) for path in made_by]
    results = sorted(str(p.relative_to(repo)) for p in (repo / "results").rglob("*.nc"))
    assert len(results) == 25 and all(made_by.count(path) == 1 for path in results), (results, made_by)
    fields = "JobID:6,Comment:44,State:11,TimeUsed:8,NodeList:6,tres-alloc:50"
    pretty = subprocess.run(["squeue", "-t", "all", "-O", fields], capture_output=True, text=True).stdout
    print(pretty)  # the evidence, for the record (pytest -s)


@live
@pytest.mark.slow
def test_training_jobs_got_their_gpu_and_sizes_from_the_profile(cluster_study):
    repo, _ = cluster_study
    jobs = slurm_jobs(repo)
    records = accounting(list(jobs))
    training = {job_id: job["rule"] for job_id, job in jobs.items() if job["rule"] in TEST_SIZES}
    floor = ["train_floor", "train_floor", "restart_floor"]
    assert sorted(training.values()) == sorted(
        ["train_aging_pack", *["train_langevin_pack"] * 2, *["train_pack"] * 4, *floor]
    )
    for job_id, record in records.items():
        assert ("gres/gpu=1" in record["AllocTRES"]) == (job_id in training), record
    for job_id, rule in training.items():
        sizes = TEST_SIZES[rule]
        assert records[job_id]["ReqMem"] == f"{sizes['mem_mb']}M", (rule, records[job_id])
        assert records[job_id]["Timelimit"] == f"00:{sizes['runtime']:02d}:00", (rule, records[job_id])


@live
@pytest.mark.slow
def test_cluster_results_equal_a_local_runs(cluster_study, tiny_study):
    repo, _ = cluster_study
    results = sorted(p.relative_to(tiny_study) for p in (tiny_study / "results").rglob("*.nc"))
    assert len(results) == 25
    for rel in results:
        assert (repo / rel).read_bytes() == (tiny_study / rel).read_bytes(), rel


@live
@pytest.mark.slow
def test_dvc_commit_records_the_cluster_run(cluster_study, tmp_path):
    repo = shutil.copytree(cluster_study[0], tmp_path / "repo", symlinks=True)
    run(["dvc", "commit", "--force", "--quiet"], repo)
    assert run(["dvc", "status", "--quiet"], repo, check=False).returncode == 0
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert {"train_pack@1-8-0", "train_aging_pack@1-8-0-1", "plot_figures"} <= set(lock["stages"])
    assert "Nothing to be done" in run(["snakemake", "-n"], repo).stdout


@live
@pytest.mark.slow
def test_dvc_repro_with_the_slurm_profile_trains_through_sbatch_and_only_what_an_edit_touches(
    cluster_study, tmp_path
):
    """After a train.lr edit, `SNAKEMAKE_PROFILE=slurm dvc repro` (docs/dvc.md): each stale stage's
    Snakemake submits its job to SLURM, a training job with its GPU; stages the edit does not touch stay."""
    repo = shutil.copytree(cluster_study[0], tmp_path / "repo", symlinks=True)
    run(["dvc", "commit", "--force", "--quiet"], repo)
    edit_params(repo, {"train": {"lr": 0.07}})
    cmd = ["timeout", "--foreground", "-k", "30", "600", "dvc", "repro", "combine_study"]
    proc = subprocess.run(
        cmd, cwd=repo, env=env() | {"SNAKEMAKE_PROFILE": "slurm"}, capture_output=True, text=True
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    ran = re.findall(r"Running stage '([^']+)'", out)
    trained = [f"train_pack@{d}-{w}-0" for d in (1, 2) for w in (2, 8)]
    extracted = [f"extract_observables@{d}-{w}-0" for d in (1, 2) for w in (2, 8)]
    assert sorted(ran) == sorted([*trained, *extracted, "combine_study"]), ran
    submitted = re.findall(r"submitted with SLURM jobid (\d+)", out)
    assert len(submitted) == len(ran), out  # one SLURM job per stage: nothing ran on the login node
    records = accounting(submitted)
    assert sum("gres/gpu=1" in r["AllocTRES"] for r in records.values()) == 4, records  # the training
    assert {r["State"] for r in records.values()} == {"COMPLETED"}, records
    for path in (repo / "results/runs").glob("*/trajectory.nc"):
        with xr.open_dataset(path) as ds:
            assert ds.attrs["lr"] == 0.07, path
    # DVC lists the stages whose own deps changed: what the edit touched beyond this target (the aging
    # and Langevin training; fits and figures of the new study.nc), never the floor or the stability scan
    stale = {stage.split("@")[0] for stage in json.loads(run(["dvc", "status", "--json"], repo).stdout)}
    assert stale == {"train_aging_pack", "train_langevin_pack", "fit_study", "plot_figures"}, stale


@pytest.fixture
def without_accounting():
    """The test cluster restarted without slurmdbd, so that sacct fails as on sites without accounting;
    restarted with it afterwards (start-slurm.sh restarts slurmctld and slurmd when slurm.conf changes)."""
    start = ["bash", str(ROOT / "tests/services/start-slurm.sh")]
    subprocess.run(start, env=os.environ | {"SLURM_LOCAL_DBD": "0"}, check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(start, env=os.environ | {"SLURM_LOCAL_DBD": "1"}, check=True, capture_output=True)


@live
@pytest.mark.slow
def test_a_failing_job_is_reported_failed_without_accounting(cluster_study, tmp_path, without_accounting):
    """On a cluster without accounting, with the slurm-squeue profile: a job that fails inside SLURM fails
    the run, named with its SLURM state; the rest is kept."""
    sacct = subprocess.run(["sacct", "-X"], capture_output=True, text=True)
    assert sacct.returncode != 0 and "accounting storage is disabled" in sacct.stderr, sacct
    repo = shutil.copytree(cluster_study[0], tmp_path / "repo", symlinks=True)
    site_profile(repo, "slurm-squeue")
    kept = {path: (repo / path).read_bytes() for path in ("results/study.nc", "results/data/encoded.nc")}
    bad = tmp_path / "broken.musicxml"  # the user's own score, which music21 cannot parse
    bad.write_text("<score-partwise><part id='P1'><measure><note>")
    config = tmp_path / "own_scores.yaml"
    config.write_text(json.dumps({"data": {"source": "files", "files": {"paths": [str(bad)]}}}))
    proc = snakemake_on_slurm(repo, "slurm-squeue", "--configfile", str(config))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    failed = re.findall(r"SLURM-job '(\d+)' failed, SLURM status is: 'FAILED'", out)
    assert len(failed) == 1, out
    squeue = ["squeue", "-t", "all", "-h", "-j", failed[0], "-o", "%T"]
    state = subprocess.run(squeue, capture_output=True, text=True)
    assert state.stdout.strip() == "FAILED", state
    job_log = (repo / f"results/logs/slurm/rule_get_chorales/{failed[0]}.log").read_text()
    assert f"{bad}: music21 cannot parse this score" in job_log, job_log
    assert f"{bad}: music21 cannot parse this score" in (repo / "results/logs/get_chorales.log").read_text()
    assert all((repo / path).read_bytes() == data for path, data in kept.items())


# One training job long enough to be preempted twice: d2_w8 trains ~1500 steps/s on one CPU, so ~13 s,
# with a resumable checkpoint every ~2.5 s. The job ends ~30 s after its submission (three startups of ~4 s
# included); Snakemake polls SLURM 2, 14, 36, 68 s after it, so the test takes 45 s, or 75 s on a busy node.
LONG_TRAIN = {"steps": 20000, "resume_every": 4000}
LONG_RUN = "results/runs/d2_w8_s0"


def squeue_job(job_id: str) -> tuple[str, str]:
    """The job's state and pending reason in squeue (("", "") once it has left it)."""
    cmd = ["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T|%r"]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout.strip()
    state, _, reason = out.partition("|")
    return state, reason


@live
@pytest.mark.slow
@pytest.mark.parametrize("name", ["slurm"])  # slurm-squeue passed it too (issue 6); one keeps CI short
def test_a_preempted_training_job_is_requeued_and_resumes(tmp_path, name):
    """Preemption with PreemptMode=REQUEUE, as `scontrol requeue` does it: SIGTERM to the running job, then
    back in the queue under the same job id (sacct records the attempt REQUEUED; a preemption by a job of a
    higher partition, tried by hand, records it PREEMPTED and goes on the same way). Twice, each time once
    the attempt has saved a checkpoint of its own. Snakemake keeps waiting on that job id; each attempt
    saves on SIGTERM and the next resumes from there; the run ends byte-identical to one never interrupted."""
    repo = copy_project(tmp_path / "cluster", NO_LANGEVIN)
    edit_params(repo, {"train": LONG_TRAIN})
    site_profile(repo, name)
    run(["snakemake", "results/data/encoded.nc", "--cores", "1"], repo)  # only the training goes to SLURM
    reference = shutil.copytree(repo, tmp_path / "reference", symlinks=True)
    target = f"{LONG_RUN}/trajectory.nc"
    checkpoint = repo / LONG_RUN / "trajectory.s0.ckpt.pt"
    rule_log = repo / "results/logs/train_pack/d2_w8_s0.log"
    out, local_out = tmp_path / "cluster.out", tmp_path / "local.out"
    procs: list[subprocess.Popen] = []
    job_id = ""

    def start(cmd: list[str], cwd: Path, output: Path) -> subprocess.Popen:
        with output.open("w") as sink:  # in a session of its own: a failed test kills it whole
            proc = subprocess.Popen(
                cmd, cwd=cwd, env=env(), stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )
        procs.append(proc)
        return proc

    def saved_anew(resumed: int, mtime_before: int | None) -> bool:
        """The attempt runs, has resumed `resumed` times (Snakemake deletes the rule's log before each
        attempt: 0 or 1) and has written a checkpoint since the last attempt's."""
        text = rule_log.read_text() if rule_log.exists() else ""
        fresh = checkpoint.exists() and checkpoint.stat().st_mtime_ns != mtime_before
        return squeue_job(job_id)[0] == "RUNNING" and text.count("resuming at step") == resumed and fresh

    try:
        local = start(["snakemake", target, "--cores", "1"], reference, local_out)  # on the other CPU
        cluster = start(snakemake_on_slurm_cmd(name, target), repo, out)
        submitted = r"submitted with SLURM jobid (\d+)"
        found = wait_for(
            "the submission", lambda: re.search(submitted, out.read_text()), cluster, out.read_text
        )
        job_id = found.group(1)
        mtime_before = None
        for kill in range(2):
            wait_for(
                f"checkpoint {kill + 1}",
                partial(saved_anew, min(kill, 1), mtime_before),
                cluster,
                out.read_text,
            )
            run(["scontrol", "requeue", job_id], repo)
            wait_for(
                "the requeue", lambda: squeue_job(job_id) == ("PENDING", "BeginTime"), cluster, out.read_text
            )
            mtime_before = checkpoint.stat().st_mtime_ns  # the SIGTERM save: the attempt has left its node
            # SLURM holds a requeued job for AuthInfo's cred_expire (120 s by default, slurm.conf(5))
            # before it may start again: nothing on a cluster, but it would triple this test's time
            run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], repo)
        cluster.wait(timeout=300)
        local.wait(timeout=300)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if job_id:
            subprocess.run(["scancel", job_id], capture_output=True)

    log = out.read_text()
    assert cluster.returncode == 0, log
    assert local.returncode == 0, local_out.read_text()
    # the same job all along: never resubmitted, never seen as failed
    assert re.findall(submitted, log) == [job_id], log
    history = ["sacct", "--duplicates", "-X", "-P", "-n", "-j", job_id, "-o", "State"]
    states = subprocess.run(history, capture_output=True, text=True, check=True).stdout.split()
    assert states == ["REQUEUED", "REQUEUED", "COMPLETED"], states
    # SLURM's log of the job holds all three attempts (the profile's --open-mode=append): each stop and
    # the resume after it, at the same step
    slurm_log = (repo / f"results/logs/slurm/rule_train_pack/2_8_0/{job_id}.log").read_text()
    requeued = re.findall(rf"\*\*\* JOB {job_id} ON \S+ CANCELLED AT \S+ DUE TO JOB REQUEUE", slurm_log)
    stops = re.findall(r"SIGTERM at step (\d+)\b.*resumable state saved", slurm_log)
    resumes = re.findall(r"resuming at step (\d+)", slurm_log)
    assert len(requeued) == 2 and len(stops) == 2, slurm_log
    assert resumes == stops and int(stops[0]) < int(stops[1]), slurm_log
    assert f"resuming at step {stops[1]}" in rule_log.read_text()  # the last attempt's own log
    assert not checkpoint.exists()  # removed once the trajectory was written
    assert (repo / target).read_bytes() == (reference / target).read_bytes()
