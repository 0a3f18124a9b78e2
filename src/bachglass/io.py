"""File input and output: atomic writes, NetCDF with compression, provenance attributes.

Every result a step writes goes through here (checkpoints too, by :func:`atomic_path`): to
``<name>.tmp`` first, renamed into place with ``os.replace``, so a killed job never leaves a
truncated file under its final name. Reading the inputs a step names (scores, the JSB file,
params.yaml) is the job of the module that parses them.
"""

import ast
import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from bachglass import __version__
from bachglass.errors import DataError

PACKAGE_DIR = Path(__file__).resolve().parent


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(text: str, path: str | Path) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(obj: Any, path: str | Path) -> None:
    """Write JSON atomically, keys sorted, so identical content gives identical bytes."""
    write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n", path)


def read_json(path: str | Path) -> Any:
    """Read a JSON file; a missing or malformed file is a ``DataError`` naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: cannot read JSON ({err}); re-create it with snakemake {path} -f") from err


def _encoding(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    """Zlib + shuffle for every numeric variable; strings stay uncompressed."""
    enc = {}
    for name, var in ds.variables.items():
        if np.issubdtype(var.dtype, np.number) or var.dtype == bool:
            enc[name] = {"zlib": True, "complevel": 4, "shuffle": True}
    return enc


def write_netcdf(ds: xr.Dataset, path: str | Path) -> None:
    """Write ``ds`` compressed to ``path`` atomically (netCDF4 format)."""
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=_encoding(ds))


def read_netcdf(path: str | Path, required: Iterable[str] = ()) -> xr.Dataset:
    """Load a NetCDF file fully into memory and close it; check that ``required`` variables exist.

    A missing, truncated or incomplete file is a ``DataError`` that names the file and says how to
    re-create it.
    """
    redo = f"re-create it: snakemake {path} -f"
    try:
        with xr.open_dataset(path, engine="netcdf4") as ds:
            ds = ds.load()
    except (OSError, ValueError, RuntimeError, AttributeError, KeyError) as err:  # netCDF4/HDF5 damage
        raise DataError(f"{path}: not a readable NetCDF file ({err}); {redo}") from err
    for name in required:
        if name not in ds.variables:
            raise DataError(f"{path}: no variable '{name}'; {redo}")
    return ds


def checkpoint_paths(output: str | Path, seeds: Iterable[int]) -> list[Path]:
    """Return where the checkpoints of the runs ``seeds`` that a job writes to ``output`` live (beside it)."""
    output = Path(output)
    return [output.with_name(f"{output.stem}.s{seed}.ckpt.pt") for seed in seeds]


def setting_id(lr: float, batch_size: int) -> str:
    """File stem of one (η, B) setting: ``lr0.1_B4`` (str of the float, as DVC's templating writes it)."""
    return f"lr{float(lr)}_B{int(batch_size)}"


def params_sha256(params: Any) -> str:
    """SHA-256 of the canonical JSON of the parameters a step used."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()


def bachglass_imports(path: str | Path, type_checking: bool = False) -> set[str]:
    """Return the ``bachglass`` modules that the source file ``path`` imports itself, inside functions too.

    Those imported for type checkers only (under ``if TYPE_CHECKING:``) count with ``type_checking``.
    """
    tree = ast.parse(Path(path).read_bytes())
    typing_only = {  # the body of `if TYPE_CHECKING:` (or `typing.TYPE_CHECKING`), not its else
        id(node)
        for block in ast.walk(tree)
        if not type_checking
        and isinstance(block, ast.If)
        and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for statement in block.body
        for node in ast.walk(statement)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module == "bachglass":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bachglass."):
            found.add(node.module.split(".")[1])  # type: ignore[union-attr]
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("bachglass.")}
    return {name for name in found if (PACKAGE_DIR / f"{name}.py").exists()}


def code_modules(path: str | Path) -> list[str]:
    """Return the ``bachglass`` modules that the source file ``path`` runs, sorted.

    Its own imports, theirs and so on (not those made for type checkers only), plus ``path`` itself
    when it is one of them. The one list of the code a step's output depends on: the workflow's rules
    take their code inputs from it, and the outputs' ``code_sha256`` hashes it.
    """
    found: set[str] = set()
    todo = [Path(path)]
    if todo[0].resolve().parent == PACKAGE_DIR:
        found.add(todo[0].stem)
    while todo:
        for name in bachglass_imports(todo.pop()) - found:
            found.add(name)
            todo.append(PACKAGE_DIR / f"{name}.py")
    return sorted(found)


def code_sha256(modules: Iterable[str]) -> str:
    """SHA-256 over the source of the named ``bachglass`` modules (a commit-independent code version)."""
    digest = hashlib.sha256()
    for name in sorted(modules):
        digest.update((PACKAGE_DIR / f"{name}.py").read_bytes())
    return digest.hexdigest()


PROVENANCE_KEYS = (
    "Conventions",
    "source",
    "references",
    "bachglass_version",
    "code_sha256",
    "params_sha256",
    "software",
)
# the libraries whose versions the numbers depend on (all of them pinned in envs/*.txt)
SOFTWARE = ("torch", "numpy", "scipy", "xarray", "netCDF4", "music21", "matplotlib")


def software() -> str:
    """Return ``python 3.11; torch 2.13.0+cpu; …``: the Python minor version, :data:`SOFTWARE`'s versions."""
    versions = [f"{name} {metadata.version(name)}" for name in SOFTWARE]
    return "; ".join([f"python {sys.version_info.major}.{sys.version_info.minor}", *versions])


def provenance(params: Any, code: str | Path) -> dict[str, str]:
    """Provenance attributes for a NetCDF output: no dates, so identical inputs give identical bytes.

    ``code`` is the source file that computes it (``__file__``): the hash covers what it runs; the
    library versions are :func:`software`'s (the same on every machine that installed the same lock).
    """
    values = (
        "CF-1.11",
        f"bachglass {__version__}",
        "Hertz & Tyrcha, Phys. Rev. E 111, 055307 (2025), doi:10.1103/PhysRevE.111.055307",
        __version__,
        code_sha256(code_modules(code)),
        params_sha256(params),
        software(),
    )
    return dict(zip(PROVENANCE_KEYS, values, strict=True))


def save_figure(fig: Any, stem: str | Path, formats: Iterable[str], dpi: int) -> list[Path]:
    """Save a matplotlib figure as ``<stem>.<fmt>`` for each format, atomically; close it.

    Metadata dates are blanked so that re-plotting the same data gives the same bytes.
    """
    import matplotlib.pyplot as plt

    paths = []
    for fmt in formats:
        path = Path(f"{stem}.{fmt}")
        metadata = {"CreationDate": None} if fmt == "pdf" else {}
        if fmt == "svg":
            metadata = {"Date": None}
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, metadata=metadata, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def write_tsv(rows: list[dict[str, Any]], path: str | Path, columns: list[str]) -> None:
    """Write rows as a tab-separated table with a header, atomically."""
    lines = ["\t".join(columns)]
    lines += ["\t".join(str(row.get(col, "")) for col in columns) for row in rows]
    write_text("\n".join(lines) + "\n", path)


def read_chorales(path: str | Path) -> list[dict[str, Any]]:
    """Read ``chorales.json`` (written by the get_chorales step); a bad file is a ``DataError``."""
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("chorales"), list):
        raise DataError(f"{path}: no 'chorales' list; re-create it: snakemake {path} -f")
    return doc["chorales"]
