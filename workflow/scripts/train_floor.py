"""Train the floor runs of one (lr, batch size), unclipped, every seed at once (rule train_floor)."""

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from bachglass import io, sgd_floor, train
from bachglass.errors import run_step

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main() -> None:
    """Train, write the runs along ``seed``; the resumable checkpoints go once the file is written."""
    torch.set_num_threads(snakemake.threads)
    config = sgd_floor.FloorConfig(**snakemake.params.sgd_floor)
    output = Path(snakemake.output.runs)
    checkpoints = [output.with_name(f"{output.stem}.s{seed}.ckpt.pt") for seed in config.seed]
    runs = sgd_floor.train_setting(
        io.read_netcdf(snakemake.input.encoded, required=train.ENCODED_VARIABLES),
        snakemake.params.train,
        config,
        lr=float(snakemake.wildcards.lr),
        batch_size=int(snakemake.wildcards.batch),
        checkpoints=checkpoints,
    )
    io.write_netcdf(runs, output)
    for checkpoint in checkpoints:
        train.remove_checkpoint(checkpoint)


if __name__ == "__main__":
    run_step(main, log=snakemake.log[0])
