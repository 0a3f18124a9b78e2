"""Train one pack of seeds of one (depth, width) and write each run's trajectory (rules train_run_s*)."""

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from bachglass import io, train
from bachglass.errors import run_step

if TYPE_CHECKING:
    from snakemake.script import snakemake

CACHE = Path("results/.train_cache")  # see train.train_pack: lets dvc repro run a pack once, not per run


def main() -> None:
    """Map Snakemake's input/params/output onto one packed training; resume from checkpoints."""
    torch.set_num_threads(snakemake.threads)
    train.train_pack(
        io.read_netcdf(snakemake.input.encoded, required=train.ENCODED_VARIABLES),
        depth=int(snakemake.wildcards.depth),
        width=int(snakemake.wildcards.width),
        seeds=list(snakemake.params.seeds),
        config=train.TrainConfig(**snakemake.params.train),
        outputs=[Path(path) for path in snakemake.output],
        cache=CACHE,
    )


if __name__ == "__main__":
    run_step(main, log=snakemake.log[0])
