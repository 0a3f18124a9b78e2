"""Train the floor runs of one (lr, B) or restart the first setting's (rules train_floor, restart_floor)."""

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from bachglass import floor_runs, io, resume, train
from bachglass.errors import run_step

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main() -> None:
    """Train, write the runs along ``seed``; the resumable checkpoints go once the file is written."""
    torch.set_num_threads(snakemake.threads)
    runs = snakemake.params.sgd_floor  # floor_runs.SETTING_KEYS or RESTART_KEYS of sgd_floor
    output = Path(snakemake.output.runs)
    checkpoints = io.checkpoint_paths(output, runs["seed"])
    encoded = io.read_netcdf(snakemake.input.encoded, required=train.ENCODED_VARIABLES)
    if hasattr(snakemake.input, "parent"):  # restart_floor: the first setting's runs at lr x factor
        parent = io.read_netcdf(snakemake.input.parent[0], required=["theta", "loss"])
        factor = float(snakemake.wildcards.factor)
        out = floor_runs.restart_setting(encoded, parent, snakemake.params.train, runs, factor, checkpoints)
    else:
        lr, batch_size = float(snakemake.wildcards.lr), int(snakemake.wildcards.batch)
        out = floor_runs.train_setting(encoded, snakemake.params.train, runs, lr, batch_size, checkpoints)
    io.write_netcdf(out, output)
    for checkpoint in checkpoints:
        resume.remove_checkpoint(checkpoint)


if __name__ == "__main__":
    run_step(main, log=snakemake.log[0])
