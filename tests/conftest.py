"""Shared pytest fixtures and synthetic data builders."""

# --- observables/figures: synthetic trajectories in the contract's trajectory.nc layout ---
import contextlib
import http.server
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import xarray as xr


def log_grid(last: int = 1000, per_decade: int = 10) -> np.ndarray:
    """Step 0 plus a log-spaced integer grid ending at ``last`` for synthetic runs.

    Not the trainer's schedule (``trajectory.checkpoint_steps`` anchors at powers of ten and appends the
    last step): the synthetic studies of the figure and fit tests were designed on this grid.
    """
    grid = np.round(np.logspace(0, np.log10(last), int(per_decade * np.log10(last)) + 1))
    return np.unique(np.concatenate([[0], grid])).astype(np.int64)


def make_trajectory(
    depth=1,
    width=4,
    seed=0,
    *,
    steps=None,
    loss=None,
    theta=None,
    group_sizes=None,
    sigma=0.01,
    data_floor=0.5,
    status="completed",
    diverged_step=-1,
    epochs_per_step=0.5,
    cell="synthetic",
):
    """One run's trajectory Dataset (dims depth, width, seed: 1; time; param).

    ``cell`` "synthetic" (no model's): θ is taken as the net's function parameters as it stands.

    Defaults: loss = floor + 2 (1 + step)^-1/2; theta = a Gaussian random walk with variance
    sigma² per SGD step, sampled at the checkpoints; groups layer1..layer{depth} (6 params each)
    and readout (5). A diverged run has NaN loss and theta from ``diverged_step`` on.
    """
    steps = log_grid() if steps is None else np.asarray(steps, dtype=np.int64)
    k = steps.size
    loss = data_floor + 2.0 / np.sqrt(1.0 + steps) if loss is None else np.asarray(loss, float)
    if group_sizes is None:
        group_sizes = {**{f"layer{i}": 6 for i in range(1, depth + 1)}, "readout": 5}
    labels = np.concatenate([[g] * n for g, n in group_sizes.items()]).astype(str)
    if theta is None:
        rng = np.random.default_rng(1000 * depth + 100 * width + seed)
        dsteps = np.diff(steps, prepend=steps[0]).astype(float)
        theta = np.cumsum(rng.normal(size=(k, labels.size)) * sigma * np.sqrt(dsteps)[:, None], 0)
        theta += rng.normal(size=labels.size)
    theta = np.array(theta, dtype=np.float32)
    loss = np.array(loss, dtype=np.float64)
    if status == "diverged":
        loss[steps >= diverged_step] = np.nan
        theta[steps >= diverged_step] = np.nan
    run = ("depth", "width", "seed")

    def grid_var(values, *dims):
        return (run + dims, np.asarray(values)[None, None, None])

    return xr.Dataset(
        {
            "loss": grid_var(loss, "time"),
            "heldout_loss": grid_var(loss + 0.5, "time"),
            "clip_fraction": grid_var(np.zeros(k), "time"),
            "theta": grid_var(theta, "time", "param"),
        },
        coords={
            "depth": [depth],
            "width": [width],
            "seed": [seed],
            "time": ("time", steps * epochs_per_step, {"units": "epoch"}),
            "step": ("time", steps, {"units": "SGD steps"}),
            "group": ("param", labels),
        },
        attrs={
            "cell": cell,
            "lr": 0.5,
            "batch_size": 16,
            "n_parameters": labels.size,
            "data_floor": data_floor,
            "device": "cpu",
            "status": status,
            "diverged_step": diverged_step,
        },
    )


# --- model/train: synthetic encoded chorales in the contract's encoded.nc layout ---
def make_encoded(n_chorales=6, length=12, vocab_sizes=(5, 4, 5, 6), seed=0, n_heldout=2):
    """A random ``encoded`` Dataset: ``n_chorales`` training + ``n_heldout`` held-out chorales.

    Lengths vary in [length // 2, length] (the first chorale has ``length``), tokens are uniform
    over each voice's vocabulary, -1 on padding; data_floor is 0 (random chorales share no prefix).
    """
    rng = np.random.default_rng(seed)
    n = n_chorales + n_heldout
    lengths = rng.integers(max(length // 2, 2), length + 1, size=n)
    lengths[0] = length
    tokens = np.stack([rng.integers(0, v, size=(n, length)) for v in vocab_sizes], axis=2)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int8)
    tokens = np.where(mask[:, :, None] > 0, tokens, -1).astype(np.int16)
    ids = [f"c{i:03d}" for i in range(n)]
    return xr.Dataset(
        {
            "tokens": (("chorale", "step", "voice"), tokens),
            "mask": (("chorale", "step"), mask),
            "vocab_size": ("voice", np.asarray(vocab_sizes, dtype=np.int16)),
        },
        coords={
            "chorale": ids,
            "split": ("chorale", ["train"] * n_chorales + ["heldout"] * n_heldout),
            "length": ("chorale", lengths.astype(np.int64)),
            "voice": ["S", "A", "T", "B"],
            "step": np.arange(length),
        },
        attrs={"n_train": n_chorales, "n_heldout": n_heldout, "data_floor": 0.0},
    )


def fits_config(**overrides):
    """A FitsConfig for small synthetic studies: params.yaml's rules, fewer windows and replicas."""
    from bachglass.fits import FitsConfig

    base = dict(
        window_start=[100],
        tail_factor=3.0,
        tail_min_decades=0.5,
        floor_factor=2.0,
        max_width_ratio=2.0,
        min_widths=3,
        extrapolation_eps=3,
        aging_tau_w_min=100,
        mu_max=1.0,
        n_boot=10,
        ci=0.95,
        seed=0,
    )
    return FitsConfig(**(base | overrides))


def train_config(**overrides):
    """A TrainConfig for tiny synthetic runs on CPU: full batch, 60 steps, float32 unless overridden."""
    from bachglass.sgd import TrainConfig

    base = dict(
        cell="rnn_tanh",
        lr=0.5,
        batch_size=None,
        steps=60,
        clip_norm=1.0,
        checkpoints_per_decade=10,
        resume_every=25,
        dtype="float32",
        device="cpu",
    )
    return TrainConfig.plain(**(base | overrides))


class Interrupted(Exception):
    """Raised by ``die_after_first_save`` where a real run would have been killed."""


def die_at_save(monkeypatch, n):
    """Interrupt the run just before its ``n``-th checkpoint file is written (a kill between files)."""
    calls = [0]
    real = torch.save

    def save(obj, path):
        calls[0] += 1
        if calls[0] == n:
            monkeypatch.setattr(torch, "save", real)
            raise Interrupted
        real(obj, path)

    monkeypatch.setattr(torch, "save", save)


@pytest.fixture
def die_after_first_save(monkeypatch):
    """Kill the run just after its first resumable checkpoint is in place (like kill -9)."""
    from bachglass import io

    real = io.atomic_path

    @contextlib.contextmanager
    def atomic_then_die(path):
        with real(path) as tmp:
            yield tmp
        monkeypatch.setattr(io, "atomic_path", real)
        raise Interrupted

    monkeypatch.setattr(io, "atomic_path", atomic_then_die)


# --- the tiny study, run once per session (test_workflow, test_remotes, test_slurm compare with it) ---
@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory: pytest.TempPathFactory):
    """A copy of the project that has run the tiny study with `snakemake --cores 2` (do not modify it)."""
    from workflow_helpers import copy_project, run

    repo = copy_project(tmp_path_factory.mktemp("smk"))
    run(["snakemake", "--cores", "2"], repo)
    return repo


# --- downloads: a local HTTP server (test_chorales, test_faults) ---
@pytest.fixture
def server():
    """An HTTP server on 127.0.0.1 serving ``files`` (path -> bytes); ``hits`` lists requests."""
    state = SimpleNamespace(files={}, hits=[], truncate=set())

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            state.hits.append(self.path)
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if self.path in state.truncate else body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()
