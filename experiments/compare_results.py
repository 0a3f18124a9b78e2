"""Compare two results folders by value: every variable of every NetCDF file, and the text files.

A redesign of the pipeline may change file layouts and provenance attributes but must not change a
number. This walks the combined files (``study.nc``, ``aging.nc``, ``langevin.nc``, ``stability.nc``,
``fits.nc``, the floor runs) and the reports (``science_checks.md``, ``metrics.json``) of two
``results/`` folders and prints, per file, the variables whose values differ (NaN equal to NaN), how far
each float one moved, and the attributes that differ; the provenance attributes (code and params hashes)
are listed apart.

    python experiments/compare_results.py /path/to/old/results /path/to/new/results
    python experiments/compare_results.py --digest results   # one value hash per file, to compare later
    python experiments/compare_results.py --packs old/results new/results  # per-run files vs pack files

The value hash covers every variable's name, dims, dtype and bytes (attributes left out), so a study
recomputed by other code, or on another day, can be checked against one that is gone.
"""

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import xarray as xr

COMBINED = ["study.nc", "aging.nc", "langevin.nc", "stability.nc", "fits.nc", "sgd_floor/*.nc"]
# metrics.json lives beside the results folder (in git), the rest inside it
TEXT = ["science_checks.md", "../metrics.json", "proposed_widths.yaml", "stability.md"]
PROVENANCE = {"code_sha256", "params_sha256"}


def same_values(a: xr.DataArray, b: xr.DataArray) -> bool:
    """Whether two variables have the same dims and values (NaN equal to NaN)."""
    if a.dims != b.dims or a.shape != b.shape:
        return False
    if a.dtype.kind in "fc" and b.dtype.kind in "fc":
        return bool(np.array_equal(a.values, b.values, equal_nan=True))
    return bool(np.array_equal(a.values, b.values))


def moved(a: xr.Dataset, b: xr.Dataset, name: str) -> bool:
    """Whether ``name``, an attribute shared by every run in ``a``, is a per-run variable of ``b`` now."""
    return (
        name in a.attrs and name not in a.variables and name in b and bool((b[name] == a.attrs[name]).all())
    )


def compare_netcdf(old: Path, new: Path) -> tuple[list[str], list[str], list[str]]:
    """Variables that differ, attributes that differ, provenance attributes that differ.

    An attribute of the old file that the new one keeps as a variable with the same value for every run
    (a pack file's status, diverged_step, ensemble_size) counts as the same.
    """
    with xr.open_dataset(old) as a, xr.open_dataset(new) as b:
        names = sorted(set(a.variables) | set(b.variables))
        differ_vars = [
            n for n in names if n not in a.variables or n not in b.variables or not same_values(a[n], b[n])
        ]
        variables = [n for n in differ_vars if not moved(a, b, n)]
        keys = sorted(set(a.attrs) | set(b.attrs))
        differ = [k for k in keys if str(a.attrs.get(k)) != str(b.attrs.get(k)) and not moved(a, b, k)]
    return variables, [k for k in differ if k not in PROVENANCE], [k for k in differ if k in PROVENANCE]


def relative_change(old: Path, new: Path, name: str) -> str | None:
    """How far a float variable moved, |new - old|/|new| over the entries finite and nonzero in both."""
    with xr.open_dataset(old) as a, xr.open_dataset(new) as b:
        if name not in a or name not in b or a[name].shape != b[name].shape or a[name].dtype.kind != "f":
            return None
        x, y = a[name].values, b[name].values
    ok = np.isfinite(x) & np.isfinite(y) & (y != 0)
    if not ok.any():
        return None
    change = np.abs(y[ok] - x[ok]) / np.abs(y[ok])
    return (
        f"    {name}: relative change median {np.median(change):.2g}, 90th percentile "
        f"{np.quantile(change, 0.9):.2g}, max {change.max():.2g} ({ok.sum()} values)"
    )


def value_digest(path: Path) -> str:
    """SHA-256 over every variable's name, dims, dtype and values (no attributes)."""
    digest = hashlib.sha256()
    with xr.open_dataset(path) as ds:
        for name in sorted(ds.variables):
            var = ds[name]
            digest.update(f"{name}|{var.dims}|{var.dtype}|{var.shape}".encode())
            digest.update(
                np.ascontiguousarray(var.values).tobytes()
                if var.dtype.kind != "O"
                else str(var.values.tolist()).encode()
            )
    return digest.hexdigest()


def digests(folder: Path) -> None:
    """Print the value hash of every combined file and the SHA-256 of every report in ``folder``."""
    for pattern in COMBINED:
        for path in sorted(folder.glob(pattern)):
            print(f"{value_digest(path)}  {path.relative_to(folder)}")
    for name in TEXT:
        if (folder / name).exists():
            print(f"{hashlib.sha256((folder / name).read_bytes()).hexdigest()}  {name} (bytes)")


def compare_packs(old: Path, new: Path) -> bool:
    """Compare the pack files of ``new`` run by run with the per-run files of ``old``; True if all equal.

    ``new``: ``d2_w8_s0-2/trajectory.nc`` and ``observables.nc``; ``old``: ``d2_w8_s0/...``, the layout
    before seed packs.
    """
    from bachglass.params import pack_seeds
    from bachglass.trajectory import runs

    same, compared = True, 0
    for path in sorted(new.rglob("*_s*/*.nc")):
        stem, seeds = path.parent.name.rsplit("_s", 1)
        packed = xr.open_dataset(path).load()
        parts = (
            runs(packed)
            if path.name == "trajectory.nc"
            else [packed.sel(seed=[s]) for s in pack_seeds(seeds)]
        )
        for seed, run in zip(pack_seeds(seeds), parts, strict=True):
            before = old / path.parent.relative_to(new).parent / f"{stem}_s{seed}" / path.name
            if not before.exists():
                print(f"{path.relative_to(new)} seed {seed}: MISSING in {old} ({before.relative_to(old)})")
                same = False
                continue
            with xr.open_dataset(before) as ref:
                differ = [v for v in ref.data_vars if v not in run or not same_values(ref[v], run[v])]
            same &= not differ
            compared += 1
            verdict = "same values" if not differ else f"DIFFERENT {differ}"
            print(f"{path.relative_to(new)} seed {seed}: {verdict}")
    print(f"{compared} runs compared")
    return same and compared > 0


def main() -> int:
    """Compare the two folders; exit 1 if a value or a report differs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path, nargs="?")
    parser.add_argument("--digest", action="store_true", help="print value hashes of the one folder given")
    parser.add_argument(
        "--packs", action="store_true", help="compare pack files with the per-run files of old"
    )
    args = parser.parse_args()
    if args.packs:
        return 0 if compare_packs(args.old, args.new) else 1
    if args.digest or args.new is None:
        digests(args.old)
        return 0
    failed = False
    for pattern in COMBINED:
        for old in sorted(args.old.glob(pattern)):
            new = args.new / old.relative_to(args.old)
            if not new.exists():
                print(f"{old.relative_to(args.old)}: missing in {args.new}")
                failed = True
                continue
            variables, attrs, provenance = compare_netcdf(old, new)
            failed |= bool(variables or attrs)
            verdict = "same values" if not (variables or attrs) else "DIFFERENT"
            print(
                f"{new.relative_to(args.new)}: {verdict}; variables {variables}, attributes {attrs}; "
                f"provenance {provenance}"
            )
            for name in variables:
                if (summary := relative_change(old, new, name)) is not None:
                    print(summary)
    for name in TEXT:
        old, new = args.old / name, args.new / name
        if old.exists():
            same = new.exists() and old.read_bytes() == new.read_bytes()
            failed |= not same
            print(f"{name}: {'same bytes' if same else 'DIFFERENT'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
