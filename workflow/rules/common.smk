"""Validation, path patterns, wildcard constraints and input functions; no rules."""

import glob
import os
import sys
from pathlib import Path

# The library lives in src/: make it importable here and in every job (local, conda or SLURM).
SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)
# (We set PYTHONPATH for the jobs; nothing is required from the user's environment.)
os.environ.update(PYTHONPATH=os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")])))

from bachglass.errors import ParamsError
from bachglass.io import params_sha256
from bachglass.params import validate_params

try:
    validate_params(config, Path(workflow.basedir) / "workflow/schemas/params.schema.yaml")
except ParamsError as err:
    sys.exit(f"error: {err}")

RUN_ID = "d{depth}_w{width}_s{seed}"
RUN = f"results/runs/{RUN_ID}"
AGING_RUN = f"results/aging/{RUN_ID}"  # the longer runs of the aging subset
LANGEVIN_RUN = f"results/langevin/T{{temperature}}/{RUN_ID}"  # the Langevin sweep, one folder per T
FLOOR = "results/sgd_floor"  # one file per (lr, batch size) of the floor runs, one per restart
FLOOR_ID = "lr{lr}_B{batch}"
STABILITY_ID = "d{depth}_w{width}_B{batch}"
STABILITY_CELL = f"results/stability/{STABILITY_ID}"  # one scan job per (depth, width, batch size)
DATA = "results/data"
FIGURES = "results/figures"
LOGS = "results/logs"
BENCHMARKS = "results/benchmarks"
FIGURE_MODULES = [
    "figures",
    "figures_layout",
    "figures_loss",
    "figures_transition",
    "figures_aging",
    "figures_glass",
    "figures_sgd",
    "langevin",
    "observables",
    "divergence",
    "two_time",
]
FIGURE_NAMES = [  # docs/science.md §1.8, in its order; figures.FIGURES draws them
    "loss_curves",
    "power_laws",
    "learning_times",
    "inverse_learning_times",
    "critical_widths",
    "phase_diagram",
    "aging_msd",
    "aging_collapse",
    "sgd_floor",
    # beyond the paper (docs/science.md Part 2 and §4)
    "two_time",
    "sharpness",
    "accuracy",
    "generalisation_phases",
    "langevin_tts",
    "stability",
    "sgd_floor_scaling",
]


wildcard_constraints:
    depth=r"\d+",
    width=r"\d+",
    seed=r"\d+",
    temperature=r"[0-9.e+-]+",
    batch=r"\d+",
    lr=r"[0-9.e-]+",
    factor=r"[0-9.e-]+",


def all_runs(filename):
    """The file `filename` of every (depth, width, seed) run of the grid."""
    grid = config["grid"]
    return expand(f"{RUN}/{filename}", depth=grid["depth"], width=grid["width"], seed=grid["seed"])


def figure_files():
    """Every figure in every format; the PNGs go into the Snakemake report with their captions."""
    files = []
    for name in FIGURE_NAMES:
        for ext in config["figures"]["formats"]:
            path = f"{FIGURES}/{name}.{ext}"
            caption = f"../report/{name}.rst"  # relative to the rule file (workflow/rules/)
            files.append(report(path, caption=caption, category="Figures") if ext == "png" else path)
    return files


def aging_runs(filename):
    """The file `filename` of every run of the aging subset (none when its grid is empty)."""
    grid = config["aging"]
    return expand(f"{AGING_RUN}/{filename}", depth=grid["depth"], width=grid["width"], seed=grid["seed"])


def aging_enabled():
    """Whether params.yaml asks for an aging subset (every one of its grid lists non-empty)."""
    return bool(aging_runs("x"))


def aging_study():
    """results/aging.nc when there is an aging subset, else nothing."""
    return ["results/aging.nc"] if aging_enabled() else []


def aging_params():
    """The train and observables sections for the aging subset: its own steps and waiting times."""
    aging = config["aging"]
    return {
        "train": config["train"] | {"steps": aging["steps"]},
        "observables": config["observables"] | {"tau_w": aging["tau_w"]},
        "grid": {key: aging[key] for key in ("depth", "width", "seed")},
    }


def stability_cells():
    """Every cell file of the stability scan (none when one of its lists is empty)."""
    scan = config["stability"]
    if not (scan["init"] and scan["lr"] and scan["seed"]):
        return []
    return expand(f"{STABILITY_CELL}.nc", depth=scan["depth"], width=scan["width"], batch=scan["batch_size"])


def stability_study():
    """results/stability.nc when there is a stability scan, else nothing."""
    return ["results/stability.nc"] if stability_cells() else []


def floor_files():
    """The floor runs of every (lr, batch size) setting (sgd_floor.settings), named as the code names them."""
    settings = config["sgd_floor"]["settings"]
    return [f"{FLOOR}/lr{float(s['lr'])}_B{int(s['batch_size'])}.nc" for s in settings]


def floor_parent():
    """The runs the restarts continue: those of the first setting."""
    return floor_files()[:1]


def restart_files():
    """One file per restart factor (none without floor settings)."""
    if not floor_files():
        return []
    return [f"{FLOOR}/restart_x{float(factor)}.nc" for factor in config["sgd_floor"]["restart_factors"]]


def langevin_runs(filename):
    """The file `filename` of every run of the Langevin sweep (none when its grid is empty).

    A temperature's folder is named by str() of the number, as DVC names it in dvc.yaml's matrix.
    """
    sweep = config["langevin"]
    return expand(
        f"{LANGEVIN_RUN}/{filename}",
        temperature=[str(t) for t in sweep["temperature"]],
        depth=sweep["depth"],
        width=sweep["width"],
        seed=sweep["seed"],
    )


def langevin_study():
    """results/langevin.nc when there is a Langevin sweep, else nothing."""
    return ["results/langevin.nc"] if langevin_runs("x") else []


def langevin_params(temperature=None):
    """The train (at `temperature`, full batch) and observables sections of the Langevin sweep.

    Full-batch gradient descent plus noise, whatever train.batch_size says, with train's lr and clip
    (none in the default study; docs/stability.md).
    """
    sweep = config["langevin"]
    train = {"steps": sweep["steps"], "temperature": temperature, "batch_size": None}
    return {
        "train": config["train"] | train,
        "observables": config["observables"] | {"tau_w": sweep["tau_w"]},
        "grid": {key: sweep[key] for key in ("depth", "width", "seed", "temperature")},
    }


def seed_packs(seeds, pack):
    """The seeds in groups of `pack`, in order: the runs one training job trains together."""
    return [seeds[i : i + pack] for i in range(0, len(seeds), pack)]


def pack_outputs(run_pattern, seeds):
    """The trajectory of each seed of a pack; depth and width stay wildcards."""
    return [f"{run_pattern}/trajectory.nc".replace("{seed}", str(seed)) for seed in seeds]


def pack_job(run_pattern, all_seeds, seeds=None):
    """Params function of a training job: its pack of seeds and the trajectory file of each.

    `seeds` is the pack of a per-pack rule; without it (per-run rules under DVC) the pack is the one
    that holds the requested seed.
    """

    def job(wildcards):
        pack = seeds or next(
            p for p in seed_packs(all_seeds, config["train"]["pack"]) if int(wildcards.seed) in p
        )
        where = {"depth": wildcards.depth, "width": wildcards.width}
        runs = [f"{run_pattern}/trajectory.nc".format(**where, seed=seed) for seed in pack]
        return {"pack": pack, "runs": runs}

    return job


def inherit_profile_settings(family, rule_name):
    """Give the generated training rule `rule_name` (train_run_s0_1_2) a profile's settings for `family`.

    Profiles (set-resources, set-threads) and --set-resources name rules exactly, but the per-pack names
    depend on the grid. So profiles name the family, e.g. train_run, which is also the name under dvc
    repro; Snakemake applies the entries as it defines each rule (Workflow.rule), so we copy the
    family's entries to the generated name just before; entries for the pack's own name win.
    tests/test_slurm.py checks the sbatch requests.
    """
    settings = workflow.resource_settings
    resources = settings._parsed_overwrite_resources
    if family in resources:  # the family's entries, then those a profile gives for this very pack
        merged = resources[family].copy()
        merged.update(resources.get(rule_name, {}))
        resources[rule_name] = merged
    threads = settings._parsed_overwrite_threads
    if family in threads:
        threads.setdefault(rule_name, threads[family])


def code(*modules):
    """Library modules whose content determines a rule's output (edits re-run the rule).

    io (file format, provenance) and errors are used by every step, so they are always included.
    """
    return upstream([f"src/bachglass/{module}.py" for module in (*modules, "io", "errors")])


def staging(sections, name):
    """Where a data step stages its output ``name`` until publish_data moves it into place.

    The folder is keyed by the hash of the params sections that decide what is published: a failed
    attempt with other params leaves its staged files, and Snakemake's record of them, on another
    path, so taking the params back re-runs nothing.
    """
    key = params_sha256({section: config[section] for section in sections})[:16]
    return f"{DATA}/.staging/{'-'.join(sections)}-{key}/{name}"


def score_files(wildcards):
    """The user's own scores (data.source: files), so that editing one re-runs get_chorales."""
    data = config["data"]
    if data["source"] != "files":
        return []
    return sorted({f for pattern in data["files"]["paths"] for f in glob.glob(pattern, recursive=True)})


# Under `dvc repro` (DVC sets DVC_STAGE for each stage's cmd) DVC has already judged every input of the
# stage current by content hash, so Snakemake must build that stage's targets and nothing upstream. The
# mtimes left by `dvc checkout`/`dvc pull` are arbitrary, and Snakemake would otherwise re-run (even
# re-train) upstream jobs whose inputs merely look newer. ancient() switches off that mtime comparison.
UNDER_DVC = "DVC_STAGE" in os.environ


def upstream(files):
    """Inputs as given, or marked ancient() when DVC drives this run."""
    return ancient(files) if UNDER_DVC else files
