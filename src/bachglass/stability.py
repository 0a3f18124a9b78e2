"""Stability scan: unclipped constant-η minibatch SGD over learning rates, batch sizes and initialisations.

Deep tanh RNNs trained with a large constant step do not fail at once: the Hessian's top eigenvalue
λ_max grows as they learn (progressive sharpening) until it passes 2/η, and then, after 10³ to 10⁴
steps, the loss jumps back up or becomes NaN. The scan trains each cell (depth, width, η, B, init) without
any clipping for as long as the study's own runs and records, per run:

- whether and when it diverged: the loss became NaN, or the full training-set loss went back above
  its value at initialisation (checked at every checkpoint);
- the share of steps whose (minibatch) gradient norm exceeded ``safety_norm``: the steps a safety
  clip at that norm would have touched;
- λ_max at log-spaced checkpoints, to compare with 2/η.

All initialisations (``train.init``), learning rates and seeds of one (depth, width, B) train as one
batched ensemble (:class:`~bachglass.ensemble.BatchedElman`): each member its own θ, η and
divergence; the members of one seed share that seed's minibatch order (and, within one init, its
initial θ), so the runs of one seed differ in η and the recurrent weights' initialisation only.
The update θ ← θ − η_m g is the one of :meth:`bachglass.sgd.SGD.step` without a clip, with η
per member.
"""

import logging
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import xarray as xr

from bachglass import device as devices
from bachglass import io, labels, model, pack_state, probes, sgd, trajectory
from bachglass.divergence import divergence_step
from bachglass.errors import DataError, ParamsError

log = logging.getLogger(__name__)

F64 = torch.float64
VARIABLES = {  # name: (dims, long_name, units); None: the label of bachglass.labels (other files hold it too)
    "loss": (("time",), None, None),
    "grad_norm_max": (("time",), None, None),
    "over_fraction": (
        ("time",),
        "fraction of the steps since the previous checkpoint with norm > safety_norm",
        "1",
    ),
    "sharpness": (("time",), None, None),
    "sharpness_residual": (("time",), None, None),
}


@dataclass(frozen=True)
class ScanConfig:
    """The ``stability`` section of params.yaml (see the comments there)."""

    depth: list[int]
    width: list[int]
    seed: list[int]
    init: list[str]
    lr: list[float]
    batch_size: list[int]
    steps: int
    safety_norm: float
    checkpoints_per_decade: int
    sharpness_per_decade: int
    power_iterations: int
    power_tolerance: float


def scan_cell(
    encoded: xr.Dataset,
    depth: int,
    width: int,
    batch_size: int,
    config: ScanConfig,
    cell: str,
    dtype: str,
    device: str,
    progress: bool = False,
) -> xr.Dataset:
    """Train every (init, η, seed) of one (depth, width, B) unclipped; dims (init, lr, seed, time).

    ``cell``, ``dtype`` and ``device`` are the study's (params.yaml train); the rest is the scan's.
    """
    if not batch_size >= 1:
        raise ParamsError(f"stability.batch_size: {batch_size} must be at least 1")
    cfg = sgd.TrainConfig.plain(
        cell=cell,
        lr=1.0,  # each member's own η is applied below
        batch_size=batch_size,
        steps=config.steps,
        clip_norm=None,
        checkpoints_per_decade=config.checkpoints_per_decade,
        resume_every=config.steps,
        dtype=dtype,
        device=device,
    )  # its init is validated only: each member's own is drawn below
    device, dtype = sgd.resolve(cfg)
    devices.announce(device)
    layout = model.HeadLayout(tuple(int(v) for v in encoded["vocab_size"].values))
    train_set, heldout = model.encode_splits(encoded, layout, dtype, device)
    data = pack_state.Data(train_set, heldout, layout)
    if batch_size > data.train.n_chorales:
        raise ParamsError(
            f"stability.batch_size: {batch_size} is more than the {data.train.n_chorales} training chorales"
        )
    specs = model.param_specs(cfg.cell, depth, width, layout.vocab_sizes)
    cells = [(init, lr, seed) for init in config.init for lr in config.lr for seed in config.seed]
    thetas = torch.stack(
        [model.init_theta(specs, width, seed, dtype, device, init) for init, _, seed in cells]
    )
    seeds = [seed for _, _, seed in cells]
    # each member its own minibatch stream, seeded by its seed: the same order at every init and η
    ens = pack_state.PackState(
        pack_state.make_engine(cfg.cell, depth, width, layout, thetas), data, cfg, list(range(len(cells)))
    )
    for member, seed in zip(ens.members, seeds, strict=True):
        member.rng = np.random.default_rng(seed)
    lrs = torch.tensor([lr for _, lr, _ in cells], dtype=dtype, device=device).unsqueeze(1)
    grid = trajectory.checkpoint_steps(config.steps, config.checkpoints_per_decade)
    probed = set(probes.sharpness_steps(grid, config.sharpness_per_decade).tolist())
    n = len(cells)
    out = {name: np.full((n, len(grid)), np.nan) for name in VARIABLES}
    snapshots: dict[int, torch.Tensor] = {}
    norm_max, over = thetas.new_zeros(n), thetas.new_zeros(n)
    last, k = 0, 0
    start = time.perf_counter()
    for step in range(config.steps + 1):
        if step == grid[k]:
            ens.flush()
            losses = ens.engine.loss(data.full)
            alive = ens.active > 0
            out["loss"][:, k] = torch.where(alive, losses, torch.nan).cpu().numpy()
            since = max(step - last, 1)
            out["grad_norm_max"][:, k] = torch.where(alive, norm_max, torch.nan).cpu().numpy()
            out["over_fraction"][:, k] = torch.where(alive, over / since, torch.nan).cpu().numpy()
            if step in probed:
                snapshots[k] = torch.where(alive.unsqueeze(1), ens.engine.theta, torch.nan).clone()
            norm_max.zero_(), over.zero_()
            last, k = step, k + 1
        if step == config.steps:
            break
        losses, grad = ens.engine.loss_grad(ens.next_batch())
        ens.watch(losses, step)
        norm = torch.linalg.vector_norm(grad, dim=1)
        norm_max = torch.maximum(norm_max, torch.nan_to_num(norm, nan=math.inf))
        over.add_(norm > config.safety_norm)
        if ens.n_stopped:
            grad.masked_fill_(ens.active.unsqueeze(1) == 0, 0.0)
        ens.engine.theta.sub_(grad * lrs)
        if progress and step % 1000 == 0:
            log.info("d%d_w%d B=%d: step %d", depth, width, batch_size, step)
    seconds = time.perf_counter() - start
    log.info(
        "d%d_w%d B=%d: %d steps x %d runs in %.1f s (%.0f model-steps/s)",
        *(depth, width, batch_size, config.steps, n, seconds, config.steps * n / seconds),
    )
    _sharpness(out, snapshots, cfg.cell, depth, width, layout, encoded, config, device)
    diverged = np.array([m.diverged_step for m in ens.members])
    cell = _dataset(out, grid, cells, config, depth, width, batch_size, diverged, ens, specs)
    cell.attrs |= devices.attrs(device)
    return cell


def _sharpness(
    out: dict[str, np.ndarray],
    snapshots: dict[int, torch.Tensor],
    cell: str,
    depth: int,
    width: int,
    layout: model.HeadLayout,
    encoded: xr.Dataset,
    config: ScanConfig,
    device: torch.device,
) -> None:
    """Fill ``out``'s sharpness (run, time), λ_max of the full training loss, and its residual."""
    net = probes.Net(cell, depth, width, layout.vocab_sizes)
    train_set, _ = model.encode_splits(encoded, layout, F64, device)
    for k, theta in snapshots.items():
        value, residual = probes.sharpness(
            net, theta.to(F64), train_set, config.power_iterations, config.power_tolerance
        )
        out["sharpness"][:, k], out["sharpness_residual"][:, k] = value.cpu().numpy(), residual.cpu().numpy()


def _dataset(
    out: dict[str, np.ndarray],
    grid: np.ndarray,
    cells: list[tuple[str, float, int]],
    config: ScanConfig,
    depth: int,
    width: int,
    batch_size: int,
    nan_step: np.ndarray,
    ens: pack_state.PackState,
    specs: list[model.ParamSpec],
) -> xr.Dataset:
    """Label the scan of one (depth, width, B): (depth, width, batch_size, init, lr, seed, time)."""
    cell_shape = (len(config.init), len(config.lr), len(config.seed))
    shape = (1, 1, 1, *cell_shape)
    data = {}
    for name, (dims, long_name, units) in VARIABLES.items():
        values = out[name].reshape(*cell_shape, len(grid))[None, None, None]
        data[name] = (
            ("depth", "width", "batch_size", "init", "lr", "seed", *dims),
            values,
            {"long_name": long_name, "units": units} if long_name else labels.attrs(name),
        )
    loss = out["loss"].reshape(*cell_shape, len(grid))
    diverged_step = divergence_step(loss, grid, nan_step.reshape(cell_shape))
    data["diverged_step"] = (
        ("depth", "width", "batch_size", "init", "lr", "seed"),
        diverged_step.reshape(shape),
        labels.attrs("diverged_step"),
    )
    coords = {
        "depth": [depth],
        "width": [width],
        "batch_size": ("batch_size", [batch_size]),
        "init": ("init", list(config.init), {"long_name": "initialisation of the recurrent weights"}),
        "lr": ("lr", list(config.lr)),
        "seed": list(config.seed),
        "step": ("time", grid),
    }
    attrs = {
        "cell": ens.config.cell,
        "n_train": int(ens.n_train),
        "n_parameters": int(sum(s.size for s in specs)),
        "safety_norm": float(config.safety_norm),
        "power_iterations": int(config.power_iterations),
        "power_tolerance": float(config.power_tolerance),
        "steps": int(config.steps),
    }
    train_params = {key: getattr(ens.config, key) for key in ("cell", "dtype", "device")}
    params = {"stability": asdict(config), "train": train_params, "depth": depth, "width": width}
    params["batch_size"] = batch_size
    return labels.label(xr.Dataset(data, coords, attrs | io.provenance(params, __file__)))


def summary(scan: xr.Dataset) -> xr.Dataset:
    """Per cell (depth, width, B, init, lr): divergences, first one, share of unsafe steps, λ_max·η/2.

    ``over_share`` counts the steps before a run's divergence; ``sharpness_ratio`` is the largest
    λ_max η / 2 measured before it (> 1: beyond the edge of stability).
    """
    steps = scan["step"]
    alive = (scan["diverged_step"] < 0) | (steps < scan["diverged_step"])
    interval = xr.DataArray(np.diff(steps.values, prepend=0), dims="time")  # steps each record covers
    over_steps = (scan["over_fraction"] * interval).where(alive).sum("time")
    run_steps = interval.where(alive).sum("time")
    ratio = (scan["sharpness"] * scan["lr"] / 2).where(alive).max("time")
    diverged = scan["diverged_step"] >= 0
    final = scan["loss"].where(alive).isel(time=-1, drop=True)
    return xr.Dataset(
        {
            "n_diverged": diverged.sum("seed").assign_attrs(long_name="runs that diverged"),
            "first_divergence": scan["diverged_step"]
            .where(diverged)
            .min("seed")
            .assign_attrs(
                long_name="earliest divergence step among the seeds (NaN: none)", units="SGD steps"
            ),
            "over_share": (over_steps.sum("seed") / run_steps.sum("seed")).assign_attrs(
                long_name="share of steps with gradient norm > safety_norm (before divergence)", units="1"
            ),
            "grad_norm_peak_alive": scan["grad_norm_max"]
            .where(alive)
            .max(("time", "seed"))
            .assign_attrs(long_name="largest gradient norm of the seeds before they diverged", units="1"),
            "sharpness_ratio": ratio.max("seed").assign_attrs(
                long_name="largest λ_max·η/2 before divergence (> 1: beyond 2/η)", units="1"
            ),
            "final_loss": final.median("seed").assign_attrs(
                long_name="median final training loss of the runs that did not diverge", units="nat per note"
            ),
        },
        attrs={"n_seeds": int(scan.sizes["seed"]), "safety_norm": scan.attrs["safety_norm"]},
    )


def combine(cells: list[xr.Dataset]) -> xr.Dataset:
    """Tile the scans of single (depth, width, B) cells into one dataset, with :func:`summary` added."""
    if not cells:
        raise DataError("stability: no scan cell to combine; give stability: lists that are not empty")
    scan = xr.combine_by_coords(cells, combine_attrs="drop_conflicts")
    return scan.merge(summary(scan))


TABLE_COLUMNS = (  # header, variable, format
    ("d", "depth", "{:d}"),
    ("w", "width", "{:d}"),
    ("B", "batch_size", "{:d}"),
    ("init", "init", "{}"),
    ("η", "lr", "{:g}"),
    ("diverged", "n_diverged", "{:d}"),
    ("first divergence (step)", "first_divergence", "{:.0f}"),
    ("steps with ‖g‖ > safety", "over_share", "{:.2%}"),
    ("max ‖g‖", "grad_norm_peak_alive", "{:.3g}"),
    ("max λ_max η/2", "sharpness_ratio", "{:.2f}"),
    ("final loss (median)", "final_loss", "{:.3g}"),
)


def table(scan: xr.Dataset) -> str:
    """Write the scan as a Markdown table, one row per (depth, width, B, init, η)."""
    n_seeds, safety = scan.sizes["seed"], scan.attrs.get("safety_norm", float("nan"))
    lines = [
        f"Stability scan: unclipped constant-η SGD, {int(scan.attrs.get('steps', 0))} steps, "
        f"{n_seeds} seeds per cell; diverged = NaN loss or training loss back above its initial value; "
        f"safety norm {safety:g}; λ_max η/2 > 1 is beyond the edge of stability 2/η.",
        "",
        "| " + " | ".join(header for header, _, _ in TABLE_COLUMNS) + " |",
        "|" + "---:|" * len(TABLE_COLUMNS),
    ]
    rows = scan[[name for _, name, _ in TABLE_COLUMNS[5:]]].to_dataframe().reset_index()
    for row in rows.itertuples(index=False):
        cells = []
        for _, name, fmt in TABLE_COLUMNS:
            value = getattr(row, name)
            if name == "n_diverged":
                cells.append(f"{int(value)}/{n_seeds}")
            elif isinstance(value, float) and not np.isfinite(value):
                cells.append("-")
            else:
                cells.append(fmt.format(int(value) if fmt == "{:d}" else value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
