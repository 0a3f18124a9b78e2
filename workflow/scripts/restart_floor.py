"""Continue the first floor setting's runs at lr x factor from sgd_floor.restart_step (rule restart_floor)."""

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from bachglass import io, sgd_floor, train
from bachglass.errors import run_step

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main() -> None:
    """Restart every seed at the smaller lr, write the runs along ``seed``."""
    torch.set_num_threads(snakemake.threads)
    config = sgd_floor.FloorConfig(**snakemake.params.sgd_floor)
    output = Path(snakemake.output.runs)
    checkpoints = [output.with_name(f"{output.stem}.s{seed}.ckpt.pt") for seed in config.seed]
    runs = sgd_floor.restart_setting(
        io.read_netcdf(snakemake.input.encoded, required=train.ENCODED_VARIABLES),
        io.read_netcdf(snakemake.input.parent[0], required=["theta", "loss"]),
        snakemake.params.train,
        config,
        factor=float(snakemake.wildcards.factor),
        checkpoints=checkpoints,
    )
    io.write_netcdf(runs, output)
    for checkpoint in checkpoints:
        train.remove_checkpoint(checkpoint)


if __name__ == "__main__":
    run_step(main, log=snakemake.log[0])
