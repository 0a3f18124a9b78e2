"""Train one seed pack of one (depth, width) into one trajectory file (rules train_*pack)."""

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from bachglass import io, sgd, train
from bachglass.errors import run_step
from bachglass.params import pack_seeds

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main() -> None:
    """Map Snakemake's wildcards, input and params onto one batched training; resume from checkpoints."""
    torch.set_num_threads(snakemake.threads)
    train.train_pack(
        io.read_netcdf(snakemake.input.encoded, required=train.ENCODED_VARIABLES),
        depth=int(snakemake.wildcards.depth),
        width=int(snakemake.wildcards.width),
        seeds=pack_seeds(snakemake.wildcards.seeds),
        config=sgd.TrainConfig(**snakemake.params.train),
        output=Path(snakemake.output.trajectory),
    )


if __name__ == "__main__":
    run_step(main, log=snakemake.log[0])
