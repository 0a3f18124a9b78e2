"""Validation, path patterns, wildcard constraints and input functions; no rules."""

import glob
import os
import sys
from pathlib import Path

# The library lives in src/: make it importable here and in every job (local or SLURM).
SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)
# (We set PYTHONPATH for the jobs; nothing is required from the user's environment.)
os.environ.update(PYTHONPATH=os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")])))

from bachglass.errors import ParamsError
from bachglass.io import code_modules, params_sha256, setting_id
from bachglass.params import pack_seeds, validate_params

try:
    validate_params(config, Path(workflow.basedir) / "workflow/schemas/params.schema.yaml")
except ParamsError as err:
    sys.exit(f"error: {err}")

RUN_ID = "d{depth}_w{width}_s{seeds}"  # one seed pack of one (depth, width): a job's runs (params.pack_seeds)
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
    seeds=r"\d+(-\d+)?",
    temperature=r"[0-9.e+-]+",
    batch=r"\d+",
    lr=r"[0-9.e-]+",
    factor=r"[0-9.e-]+",


def all_runs(filename):
    """The file `filename` of every seed pack of every (depth, width) of the grid."""
    grid = config["grid"]
    return expand(f"{RUN}/{filename}", depth=grid["depth"], width=grid["width"], seeds=grid["seed"])


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
    """The file `filename` of every seed pack of the aging subset (none when its grid is empty)."""
    grid = config["aging"]
    return expand(f"{AGING_RUN}/{filename}", depth=grid["depth"], width=grid["width"], seeds=grid["seed"])


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
    return [f"{FLOOR}/{setting_id(s['lr'], s['batch_size'])}.nc" for s in settings]


def floor_parent():
    """The runs the restarts continue: those of the first setting."""
    return floor_files()[:1]


def restart_files():
    """One file per restart factor (none without floor settings)."""
    if not floor_files():
        return []
    return [f"{FLOOR}/restart_x{float(factor)}.nc" for factor in config["sgd_floor"]["restart_factors"]]


def langevin_runs(filename):
    """The file `filename` of every seed pack of the Langevin sweep (none when its grid is empty).

    A temperature's folder is named by str() of the number, as DVC names it in dvc.yaml's matrix.
    """
    sweep = config["langevin"]
    return expand(
        f"{LANGEVIN_RUN}/{filename}",
        temperature=[str(t) for t in sweep["temperature"]],
        depth=sweep["depth"],
        width=sweep["width"],
        seeds=sweep["seed"],
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


def langevin_train(wildcards):
    """Params function of a Langevin training job: the train section at its folder's temperature."""
    return langevin_params(float(wildcards.temperature))["train"]


def code(*scripts):
    """The library modules that the step scripts `scripts` run (bachglass.io.code_modules): an edit of
    one re-runs the rule. The imports are the one list (dvc.yaml's deps are tested equal to it)."""
    folder = Path(workflow.basedir) / "workflow/scripts"
    modules = sorted({module for script in scripts for module in code_modules(folder / script)})
    return upstream([f"src/bachglass/{module}.py" for module in modules])


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
