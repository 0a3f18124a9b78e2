"""Train one pack of seeds of one (d, w); write the trajectories its rule asks for (rules train_run*)."""

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from bachglass import io, sgd, train
from bachglass.errors import run_step

if TYPE_CHECKING:
    from snakemake.script import snakemake

# Under dvc repro (DVC sets DVC_STAGE) a job writes its own run only and leaves the rest of its pack
# here for the jobs of their stages (see workflow/rules/train.smk). Not a param: the two ways of
# running must not look like different params to Snakemake.
CACHE = Path("results/.train_cache") if "DVC_STAGE" in os.environ else None


def main() -> None:
    """Map Snakemake's input/params/output onto one packed training; resume from checkpoints."""
    torch.set_num_threads(snakemake.threads)
    job = snakemake.params.job
    train.train_pack(
        io.read_netcdf(snakemake.input.encoded, required=train.ENCODED_VARIABLES),
        depth=int(snakemake.wildcards.depth),
        width=int(snakemake.wildcards.width),
        seeds=list(job["pack"]),
        config=sgd.TrainConfig(**snakemake.params.train),
        runs=[Path(run) for run in job["runs"]],
        wanted=[Path(path) for path in snakemake.output],
        cache=CACHE,
    )


if __name__ == "__main__":
    run_step(main, log=snakemake.log[0])
