"""Train one (depth, width, seed) network and write its trajectory (rule train_run)."""

from typing import TYPE_CHECKING

import torch

from bachglass import io, train
from bachglass.errors import run_step

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main() -> None:
    """Map Snakemake's input/params/output onto one training call; resume from a checkpoint."""
    torch.set_num_threads(snakemake.threads)
    checkpoint = io.checkpoint_path(snakemake.output.trajectory)
    run = train.train_run(
        io.read_netcdf(snakemake.input.encoded, required=train.ENCODED_VARIABLES),
        depth=int(snakemake.wildcards.depth),
        width=int(snakemake.wildcards.width),
        seed=int(snakemake.wildcards.seed),
        config=train.TrainConfig(**snakemake.params.train),
        checkpoint=checkpoint,
    )
    io.write_netcdf(run, snakemake.output.trajectory)
    train.remove_checkpoint(checkpoint)


if __name__ == "__main__":
    run_step(main, log=snakemake.log[0])
