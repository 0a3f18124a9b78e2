"""Encode the chorales as per-voice token sequences (rule encode_chorales)."""

from typing import TYPE_CHECKING

from bachglass import encoding, io
from bachglass.errors import run_step

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main() -> None:
    """Map Snakemake's input/params/output onto one library call."""
    params = snakemake.params.encoding
    encoded = encoding.encode(
        io.read_chorales(snakemake.input.chorales),
        encoding.EncodingConfig(**params),
        provenance=io.provenance(params, __file__),
    )
    io.write_netcdf(encoded, snakemake.output.encoded)


if __name__ == "__main__":
    run_step(main, log=snakemake.log[0])
