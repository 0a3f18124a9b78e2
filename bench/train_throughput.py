"""Training throughput: plain per-model nn.RNN loop vs the project's trainer vs the batched ensemble.

Model-steps/s (SGD steps times models, per second) of one SGD step on the synthetic data of the
benchmark model of docs/development.md "Training speed" (4 voices, vocab sizes 26/21/21/26 with the rest
token, T = 128, minibatches of ``--batch`` drawn from ``--chorales`` chorales): every implementation
trains its models with its own minibatch order, plain SGD, gradient-norm clip 1. They run side by
side in one process, in interleaved rounds, and each cell is the median of the rounds, so that a
neighbour's load hits them all alike. Ratios are to the plain loop.

* ``plain``: for each model in turn, ``torch.nn.RNN`` + ``nn.Linear`` readout, autograd,
  ``clip_grad_norm_`` and ``torch.optim.SGD`` (what a physicist writes first).
* ``trainer S=1``: the project's trainer (``pack_state.PackState`` of one run: the manual-BPTT engine,
  clipping and divergence checks, as ``snakemake`` runs a seed pack of one seed).
* ``ensemble S=k``: k runs of the same (d, w) as one batched model (a seed pack of k seeds).

GFLOP/s counts the useful arithmetic of that model: forward 2·T·B·(2·I·w + (2d − 1)·w²),
a step 3× that; the peak is a measured float32 2048² matmul on the same threads.

Usage: python bench/train_throughput.py [--quick] [--device cuda] [--out FILE]
"""

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bachglass import model, pack_state, sgd

VOCAB = (26, 21, 21, 26)  # 25/20/20/25 pitches + a rest token
SHAPES = [(1, 16), (2, 32), (3, 64), (4, 128), (3, 16)]


def synthetic_batch(n_chorales: int, n_steps: int, device: torch.device) -> model.Batch:
    """Random-walk tokens per voice (the benchmark model), encoded like real chorales."""
    rng = np.random.default_rng(0)
    steps = rng.integers(-2, 3, size=(n_chorales, n_steps + 1, len(VOCAB)))
    start = rng.integers(0, min(VOCAB), size=(n_chorales, 1, len(VOCAB)))
    tokens = np.abs(start + np.cumsum(steps, axis=1)) % np.array(VOCAB)
    mask = np.ones(tokens.shape[:2])
    return model.encode_batch(tokens, mask, model.HeadLayout(VOCAB), torch.float32, device)


def flop_per_step(depth: int, width: int, n_steps: int, batch: int) -> float:
    """Useful FLOP of one SGD step of one model (the benchmark model: forward, then 2× for backward)."""
    n_io = sum(VOCAB)
    forward = 2 * n_steps * batch * (2 * n_io * width + (2 * depth - 1) * width**2)
    return 3.0 * forward


class Plain:
    """The plain per-model loop: nn.RNN + Linear, autograd, clip_grad_norm_, optim.SGD."""

    def __init__(self, depth: int, width: int, data: model.Batch, args: argparse.Namespace) -> None:
        self.data, self.batch, self.layout = data, args.batch, model.HeadLayout(VOCAB)
        self.nets = [model.RNNModel("rnn_tanh", depth, width, VOCAB).to(data.x.device) for _ in range(1)]
        self.opts = [torch.optim.SGD(net.parameters(), lr=args.lr) for net in self.nets]
        self.rng = np.random.default_rng(1)
        self.models = 1

    def step(self) -> None:
        """One SGD step of every model."""
        for net, opt in zip(self.nets, self.opts, strict=True):
            idx = torch.as_tensor(self.rng.choice(self.data.y.shape[1], self.batch, replace=False))
            x, y = self.data.x[:, idx.to(self.data.x.device)], self.data.y[:, idx.to(self.data.x.device)]
            opt.zero_grad(set_to_none=True)
            loss = model.cross_entropy(net(x), y, VOCAB)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()


class Packed:
    """The project's trainer: ``pack_state.PackState`` of ``size`` runs (size 1: the single-run trainer)."""

    def __init__(
        self, depth: int, width: int, data: model.Batch, args: argparse.Namespace, size: int
    ) -> None:
        layout = model.HeadLayout(VOCAB)
        config = sgd.TrainConfig.plain(
            cell="rnn_tanh",
            lr=args.lr,
            batch_size=args.batch,
            steps=10**9,
            clip_norm=1.0,
            checkpoints_per_decade=20,
            resume_every=10**9,
            dtype="float32",
            device=str(data.x.device.type),
        )
        specs = model.param_specs("rnn_tanh", depth, width, VOCAB)
        thetas = torch.stack(
            [model.init_theta(specs, width, s, torch.float32, data.x.device) for s in range(size)]
        )
        engine = pack_state.make_engine("rnn_tanh", depth, width, layout, thetas)
        data = pack_state.Data(data, None, layout)
        self.ensemble = pack_state.PackState(engine, data, config, list(range(size)))
        self.models = size

    def step(self) -> None:
        """One SGD step of every run."""
        self.ensemble.sgd_step(record=False)
        self.ensemble.step += 1


def sync(device: torch.device) -> None:
    """Wait for queued GPU work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(impl: Plain | Packed, seconds: float, device: torch.device) -> float:
    """Model-steps/s of ``impl`` over about ``seconds`` (at least one step)."""
    n, start = 0, time.perf_counter()
    while True:
        impl.step()
        n += 1
        sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n * impl.models / elapsed


def matmul_peak(device: torch.device) -> float:
    """Measured float32 GFLOP/s of a 2048² matmul (the reference for the fraction of peak)."""
    a, b = torch.randn(2048, 2048, device=device), torch.randn(2048, 2048, device=device)
    for _ in range(2):
        a @ b
    sync(device)
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        sync(device)
        runs.append(time.perf_counter() - start)
    return 2 * 2048**3 / min(runs) / 1e9


def markdown(rows: list[dict], impls: list[str], peak: float) -> str:
    """The table as Markdown: model-steps/s (× plain) per (d, w), then the plain and best GFLOP/s."""
    head = "| (d, w) | " + " | ".join(impls) + " | plain GFLOP/s (% peak) | best GFLOP/s (% peak) |"
    lines = [head, "|" + "---|" * (len(impls) + 3)]
    for depth, width in dict.fromkeys((r["depth"], r["width"]) for r in rows):
        cells = {r["impl"]: r for r in rows if (r["depth"], r["width"]) == (depth, width)}
        best = max(cells.values(), key=lambda r: r["model_steps_per_s"])
        values = [
            f"{cells[k]['model_steps_per_s']:.0f}"
            + ("" if k == "plain" else f" (×{cells[k]['ratio_to_plain']:.1f})")
            for k in impls
        ]
        values += [f"{r['gflops']:.1f} ({100 * r['fraction_of_peak']:.0f} %)" for r in (cells["plain"], best)]
        lines.append(f"| ({depth}, {width}) | " + " | ".join(values) + " |")
    return "\n".join(lines)


def main() -> None:
    """Run the benchmark table, print it, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (per-core numbers)")
    parser.add_argument("--batch", type=int, default=16, help="chorales per SGD step")
    parser.add_argument("--chorales", type=int, default=300)
    parser.add_argument("--steps-per-seq", dest="n_steps", type=int, default=128, help="T")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--sizes", default=None, help="ensemble sizes, comma separated")
    parser.add_argument("--shapes", default=None, help="(d,w) list like 1x16,2x32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0, help="time per cell per round")
    parser.add_argument("--quick", action="store_true", help="1 round of 0.3 s, w <= 32: a smoke run")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    default_sizes = "1,4,16,64" if device.type == "cpu" else "1,16,64,256,1024"
    sizes = [int(s) for s in (args.sizes or default_sizes).split(",")]
    shapes = (
        SHAPES if args.shapes is None else [tuple(map(int, s.split("x"))) for s in args.shapes.split(",")]
    )
    if args.quick:
        args.rounds, args.seconds = 1, 0.3
        shapes = [s for s in shapes if s[1] <= 32]
    data = synthetic_batch(args.chorales, args.n_steps, device)
    peak = matmul_peak(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(
        f"# {name}, {args.threads} thread(s), torch {torch.__version__}; "
        f"float32 matmul peak {peak:.1f} GFLOP/s"
    )
    print(
        f"# T={args.n_steps}, batch {args.batch} of {args.chorales}; "
        f"model-steps/s, median of {args.rounds} rounds"
    )
    rows = []
    for depth, width in shapes:
        impls = {"plain": Plain(depth, width, data, args)}
        impls |= {f"S={k}": Packed(depth, width, data, args, k) for k in sizes}
        for impl in impls.values():  # warm-up: buffers, first-call costs
            impl.step()
        sync(device)
        samples: dict[str, list[float]] = {key: [] for key in impls}
        for _ in range(args.rounds):
            for key, impl in impls.items():
                samples[key].append(timed(impl, args.seconds, device))
        flop = flop_per_step(depth, width, args.n_steps, args.batch)
        for key, values in samples.items():
            rate = statistics.median(values)
            rows.append(
                {
                    "depth": depth,
                    "width": width,
                    "impl": key,
                    "model_steps_per_s": rate,
                    "ratio_to_plain": rate / statistics.median(samples["plain"]),
                    "gflops": rate * flop / 1e9,
                    "fraction_of_peak": rate * flop / 1e9 / peak,
                    "spread": (max(values) - min(values)) / rate,
                }
            )
        best = max((r for r in rows[-len(impls) :]), key=lambda r: r["model_steps_per_s"])
        cells = "  ".join(
            f"{r['impl']} {r['model_steps_per_s']:.1f} (×{r['ratio_to_plain']:.2f})"
            for r in rows[-len(impls) :]
        )
        print(
            f"(d,w)=({depth},{width}): {cells}; best {best['impl']} {best['gflops']:.1f} GFLOP/s = "
            f"{100 * best['fraction_of_peak']:.0f}% of peak",
            flush=True,
        )
    print(markdown(rows, list(impls), peak))
    out = args.out or Path("bench/results") / f"train_throughput_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "device": name,
        "threads": args.threads,
        "torch": torch.__version__,
        "peak_gflops": peak,
        "batch": args.batch,
        "chorales": args.chorales,
        "T": args.n_steps,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "platform": platform.platform(),
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"# wrote {out}")


if __name__ == "__main__":
    main()
