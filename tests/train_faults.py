"""Train one pack in this process and, on request, kill it at a chosen point (driver for test_resume.py).

    python tests/train_faults.py <encoded.nc> <run dir> <steps> [<fault> <n>]

trains seeds 0 and 1 of d = 2, w = 8 for ``steps`` SGD steps with ``train.train_pack`` into
``<run dir>/d2_w8_s{seed}/trajectory.nc`` (checkpoints beside them), as the workflow's training step
does. A fault sends this process a real signal at its n-th occurrence of a point of the training code;
the points are reached through thin wrappers around the library's own functions, so the code under
test is the production code:

- ``step``: SIGKILL inside SGD step n (gradients computed, θ not yet updated)
- ``record``: SIGKILL just after the snapshot at step n was taken in memory
- ``save``: SIGKILL halfway through writing the n-th checkpoint file (half its bytes on disk)
- ``between``: SIGKILL just before the n-th checkpoint file is written (n even: the pack's first run
  is saved at the new step, the second still at the old one)
- ``netcdf``: SIGKILL halfway through writing the n-th trajectory file
- ``written``: SIGKILL just after the n-th trajectory file is in place (its checkpoint not yet removed)
- ``sigterm`` / ``sigint``: SIGTERM or SIGINT inside SGD step n (SLURM preemption, Ctrl-C)
"""

import dataclasses
import io as bytes_io
import logging
import os
import signal
import sys
from pathlib import Path

import torch

from bachglass import io, train
from bachglass.pack_state import PackState
from bachglass.sgd import TrainConfig

DEPTH, WIDTH, SEEDS = 2, 8, [0, 1]
START = "training starts"  # on stderr once the imports and the data are done
CONFIG = TrainConfig.plain(
    cell="rnn_tanh",
    lr=0.5,
    batch_size=4,  # minibatches: the permutation and its position must be restored too
    steps=60,  # the tests' default; the command line sets it
    clip_norm=0.1,  # clipping: so must the clip counter
    checkpoints_per_decade=20,
    resume_every=7,
    dtype="float32",
    device="cpu",
)


def runs(run_dir: Path) -> list[Path]:
    """The trajectory file of the pack (one, along seed), as the workflow names it."""
    return [run_dir / f"d{DEPTH}_w{WIDTH}_s{SEEDS[0]}-{SEEDS[-1]}" / "trajectory.nc"]


def die(sig: signal.Signals = signal.SIGKILL) -> None:
    """Send this process ``sig`` now (SIGKILL: no handler, no cleanup, as kill -9)."""
    sys.stderr.flush()
    os.kill(os.getpid(), sig)


def half_write(data: bytes, path: Path) -> None:
    """Put the first half of ``data`` on disk at ``path``, then die (a crash mid-write)."""
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
    die()


def inject(fault: str, n: int) -> None:
    """Wrap the library function where ``fault`` strikes, so that it strikes at occurrence ``n``."""
    count = [0]

    def hit() -> bool:
        count[0] += 1
        return count[0] == n

    if fault in ("step", "sigterm", "sigint"):
        update = PackState.update
        sig = {"step": signal.SIGKILL, "sigterm": signal.SIGTERM, "sigint": signal.SIGINT}[fault]

        def update_then_signal(self: PackState, grad: torch.Tensor) -> None:
            if self.step == n:
                die(sig)  # SIGTERM/SIGINT: the handler notes it and the step completes
            update(self, grad)

        PackState.update = update_then_signal  # type: ignore[method-assign]
    elif fault == "record":
        record = PackState.record

        def record_then_die(self: PackState, step: int, losses: torch.Tensor | None) -> None:
            record(self, step, losses)
            if step == n:
                die()

        PackState.record = record_then_die  # type: ignore[method-assign]
    elif fault in ("save", "between"):
        save = torch.save

        def save_faulty(obj: object, path: Path) -> None:
            if hit():
                if fault == "between":
                    die()
                buffer = bytes_io.BytesIO()
                save(obj, buffer)
                half_write(buffer.getvalue(), Path(path))
            save(obj, path)

        torch.save = save_faulty
    elif fault in ("netcdf", "written"):
        write = io.write_netcdf

        def write_faulty(ds: object, path: Path) -> None:
            if fault == "netcdf" and hit():
                write(ds, Path(str(path) + ".whole"))
                whole = Path(str(path) + ".whole")
                data = whole.read_bytes()
                whole.unlink()
                half_write(data, Path(path).with_name(Path(path).name + ".tmp"))
            write(ds, path)
            if fault == "written" and hit():
                die()

        io.write_netcdf = write_faulty
    else:
        raise SystemExit(f"unknown fault {fault!r}")


def main() -> None:
    encoded, run_dir, steps = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    if len(sys.argv) > 4:
        inject(sys.argv[4], int(sys.argv[5]))
    logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s", stream=sys.stderr)
    logging.getLogger("bachglass").setLevel(logging.DEBUG)  # the periodic saves too, as in a rule's log
    torch.set_num_threads(1)
    data = io.read_netcdf(encoded, required=train.ENCODED_VARIABLES)
    paths = runs(run_dir)
    print(START, file=sys.stderr, flush=True)
    config = dataclasses.replace(CONFIG, steps=steps)
    train.train_pack(data, DEPTH, WIDTH, SEEDS, config, paths[0])


if __name__ == "__main__":
    main()
