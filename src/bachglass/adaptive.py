"""Adaptive widths: new grid widths where the transition w_c* is least certain.

The seed-bootstrap interval of w_c*(d) (``fits.nc``: ``w_c_star_lo``, ``w_c_star_hi``) is widest where
the grid has too few widths near the transition. Depths are ranked by the width of that interval;
inside the widest one each new width goes to the integer nearest the middle of the largest gap
between the grid's widths and the interval's ends, until the interval has no free integer or enough
widths are proposed; then the next depth. When no depth has a finite w_c* interval, the intervals of
w_c(eps) at the smallest eps that has one are used; when nothing is finite, nothing is proposed and
the reason is logged and written.

From the repository root (``bachglass`` is installed in the venv in editable mode)::

    .venv/bin/python -m bachglass.adaptive                     # print proposals
    .venv/bin/python -m bachglass.adaptive --apply             # and append them to grid.width
    .venv/bin/python -m bachglass.adaptive --fits results/fits.nc --params params.yaml --apply
"""

import argparse
import itertools
import logging
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
import yaml

from bachglass import io
from bachglass.errors import DataError, ParamsError, run_step
from bachglass.params import load_params, validate_params

log = logging.getLogger(__name__)

FITS_VARIABLES = ("w_c_star", "w_c_star_lo", "w_c_star_hi", "w_c", "w_c_lo", "w_c_hi")
SCHEMA = "workflow/schemas/params.schema.yaml"
GRID_LINE = re.compile(r"grid\s*:\s*(#.*)?$")
WIDTH_KEY = re.compile(r"\s+width\s*:")
FLOW_LIST = re.compile(r"(?P<head>\s+width\s*:\s*)\[(?P<items>[^\[\]#]*)\](?P<tail>\s*(#.*)?)")
BLOCK_HEAD = re.compile(r"(?P<head>\s+width\s*:)\s*(?P<tail>#.*)?")  # width: (items on the next lines)
BLOCK_ITEM = re.compile(r"\s+-\s+(?P<value>[^\s#]+)\s*(#.*)?")


@dataclass(frozen=True)
class Interval:
    """A finite confidence interval [lo, hi] of the transition width at one depth."""

    depth: int
    lo: float
    hi: float
    source: str  # "w_c*" or "w_c(eps=0.03)"


@dataclass(frozen=True)
class Proposal:
    """One new grid width, the interval it was placed in, and why."""

    width: int
    depth: int
    lo: float
    hi: float
    source: str
    reason: str


def _check(fits: xr.Dataset) -> None:
    """Raise a ``DataError`` naming the first fits variable that is missing."""
    for name in FITS_VARIABLES:
        if name not in fits.variables:
            raise DataError(f"fits: no variable '{name}'; re-create it: snakemake results/fits.nc -f")


def _finite(lo: xr.DataArray, hi: xr.DataArray, source: str) -> list[Interval]:
    """Intervals (dim depth) with finite ends, widest first (ties: lower depth first)."""
    rows = [
        Interval(int(d), float(a), float(b), source)
        for d, a, b in zip(lo["depth"].values, lo.values, hi.values, strict=True)
        if np.isfinite(a) and np.isfinite(b) and b >= a
    ]
    return sorted(rows, key=lambda r: (-(r.hi - r.lo), r.depth))


def transition_intervals(fits: xr.Dataset) -> tuple[list[Interval], str]:
    """Finite intervals of w_c* per depth, widest first, and a line saying which were used or why none.

    Falls back to w_c(eps) at the smallest eps with a finite interval at some depth: the
    extrapolation needs fits at two eps at least, a single eps may still have one.
    """
    _check(fits)
    level = f"{100 * float(fits.attrs['ci']):g}% " if "ci" in fits.attrs else ""
    found = _finite(fits["w_c_star_lo"], fits["w_c_star_hi"], "w_c*")
    if found:
        return found, f"{level}seed-bootstrap intervals of w_c* (eps -> 0)"
    for eps in np.sort(fits["eps"].values):
        source = f"w_c(eps={eps:g})"
        found = _finite(fits["w_c_lo"].sel(eps=eps), fits["w_c_hi"].sel(eps=eps), source)
        if found:
            return found, f"no finite w_c* interval at any depth; {level}intervals of {source} (smallest eps)"
    return [], (
        "no finite w_c* or w_c(eps) interval at any depth (too few widths reached eps, or the runs "
        "diverged); no width proposed: add widths around the loss transition by hand"
    )


def largest_gap_pick(lo: float, hi: float, taken: set[int]) -> tuple[int, float, float] | None:
    """(width, gap start, gap end): the free integer nearest the middle of the largest gap, or None.

    The gaps lie between the interval's ends and the taken widths inside it; a gap without a free
    integer (>= 1) is passed over for the next largest. Ties go to the lower gap and width.
    """
    points = sorted({lo, hi, *(w for w in taken if lo < w < hi)})
    gaps = sorted(itertools.pairwise(points), key=lambda g: (-(g[1] - g[0]), g[0]))
    for a, b in gaps:
        free = [k for k in range(max(1, math.ceil(a)), math.floor(b) + 1) if k not in taken]
        if free:
            mid = (a + b) / 2
            return min(free, key=lambda k: (abs(k - mid), k)), a, b
    return None


def plan_widths(fits: xr.Dataset, widths: Sequence[int], n_widths: int) -> tuple[list[Proposal], str]:
    """Up to ``n_widths`` new widths (see the module docstring), and a line on what they rest on."""
    intervals, note = transition_intervals(fits)
    taken = {int(w) for w in widths}
    proposals: list[Proposal] = []
    # an interval reaching beyond the grid is cut to its range: a bootstrap tail must not ask for
    # a width far from every measured one (w = 300 costs more than the whole grid)
    low, high = (min(taken), max(taken)) if taken else (1, math.inf)
    for rank, iv in enumerate(intervals, start=1):
        lo, hi = max(iv.lo, low), min(iv.hi, high)
        cut = f", cut to the grid's range [{lo:.4g}, {hi:.4g}]" if (lo, hi) != (iv.lo, iv.hi) else ""
        while len(proposals) < n_widths and lo < hi and (pick := largest_gap_pick(lo, hi, taken)):
            k, a, b = pick
            taken.add(k)
            reason = (
                f"{iv.source} of depth {iv.depth} lies in [{iv.lo:.4g}, {iv.hi:.4g}] "
                f"({iv.hi - iv.lo:.3g} wide, rank {rank} of {len(intervals)}{cut}); "
                f"{k} splits its largest open gap ({a:.4g}, {b:.4g})"
            )
            proposals.append(Proposal(k, iv.depth, iv.lo, iv.hi, iv.source, reason))
    if intervals and len(proposals) < n_widths:
        note += f"; {len(proposals)} of {n_widths} widths: every other integer inside is in the grid"
    if len(proposals) < n_widths:
        log.warning("adaptive widths: %s", note)
    return proposals, note


def propose_widths(fits: xr.Dataset, widths: Sequence[int], n_widths: int) -> list[Proposal]:
    """``n_widths`` new integer widths (fewer, or none, when the intervals leave no room; logged).

    ``widths`` is the grid's width list (shared by all depths); no proposal repeats one of them.
    """
    return plan_widths(fits, widths, n_widths)[0]


def _round(x: float) -> float:
    """Six significant digits: enough for a width, stable in the YAML."""
    return float(f"{x:.6g}")


def format_proposals(proposals: Sequence[Proposal], note: str) -> str:
    """Render the proposals as YAML: the sorted widths, what they rest on, then each with its reason."""
    doc = {
        "widths": sorted(p.width for p in proposals),
        "basis": note,
        "proposals": [
            {
                "width": p.width,
                "depth": p.depth,
                "interval": [_round(p.lo), _round(p.hi)],
                "source": p.source,
                "reason": p.reason,
            }
            for p in proposals
        ],
    }
    head = "# new grid widths (bachglass.adaptive); append them: python -m bachglass.adaptive --apply\n"
    return head + yaml.safe_dump(
        doc, sort_keys=False, default_flow_style=None, allow_unicode=True, width=1000
    )


def write_proposals(proposals: Sequence[Proposal], path: str | Path, note: str = "") -> None:
    """Write the proposals as YAML, atomically; ``note`` says what they rest on, or why there are none."""
    io.write_text(format_proposals(proposals, note), path)


def propose_from_files(
    fits_path: str | Path, widths: Sequence[int], n_widths: int, out_path: str | Path
) -> list[Proposal]:
    """Read ``fits.nc``, propose widths, write them to ``out_path`` (the rule's one library call)."""
    fits = io.read_netcdf(fits_path, required=FITS_VARIABLES)
    proposals, note = plan_widths(fits, widths, n_widths)
    write_proposals(proposals, out_path, note)
    return proposals


def _width_line(lines: list[str], where: str) -> int:
    """Index of the ``width:`` line inside the top-level ``grid:`` block."""
    start = next((i for i, line in enumerate(lines) if GRID_LINE.fullmatch(line.rstrip("\r\n"))), None)
    if start is not None:
        for i in range(start + 1, len(lines)):
            line = lines[i]
            if line.strip() and not line[0].isspace() and not line.startswith("#"):
                break  # the next top-level key
            if WIDTH_KEY.match(line):
                return i
    raise ParamsError(f"{where}: grid.width: no 'width:' line inside a block-style 'grid:' section")


def _flow_from_block(lines: list[str], i: int) -> list[str]:
    """Rewrite a block-style width list (``width:`` then ``- 4`` lines) as one flow-list line.

    A params.yaml written by a YAML dumper has block lists; the edit then changes those lines only.
    """
    head = BLOCK_HEAD.fullmatch(lines[i].rstrip("\r\n"))
    if head is None:
        return lines
    j, items = i + 1, []
    while j < len(lines) and (item := BLOCK_ITEM.fullmatch(lines[j].rstrip("\r\n"))):
        items.append(item["value"])
        j += 1
    if not items:
        return lines
    tail = f"  {head['tail']}" if head["tail"] else ""
    return [*lines[:i], f"{head['head']} [{', '.join(items)}]{tail}\n", *lines[j:]]


def _merged_line(line: str, widths: Sequence[int], where: str) -> tuple[str, list[int]]:
    """Merge ``widths`` into the width line, sorted, keeping its indent and trailing comment."""
    body = line.rstrip("\r\n")
    match = FLOW_LIST.fullmatch(body)
    if match is None:
        raise ParamsError(
            f"{where}: grid.width: {body.strip()!r} is not a single-line flow list; "
            "write it as 'width: [4, 6, 8]  # comment' and apply again"
        )
    try:
        old = [int(x) for x in match["items"].split(",") if x.strip()]
    except ValueError as err:
        raise ParamsError(f"{where}: grid.width: [{match['items']}] is not a list of integers") from err
    new = sorted(set(old) | {int(w) for w in widths})
    return f"{match['head']}[{', '.join(map(str, new))}]{match['tail']}{line[len(body) :]}", new


def apply_proposals(params_path: str | Path, widths: Sequence[int], schema: str | Path = SCHEMA) -> list[int]:
    """Append ``widths`` to grid.width of ``params_path`` in place; return the new width list.

    Only the grid.width line changes (edited as text, so every comment and every other byte stays;
    a block-style list becomes one flow-list line);
    the result must still parse to that list and validate against ``schema`` before it replaces the
    file (atomically). ``schema`` is relative to the working directory, like in the Snakefile.
    """
    where = str(params_path)
    text = Path(params_path).read_text()
    lines = text.splitlines(keepends=True)
    i = _width_line(lines, where)
    lines = _flow_from_block(lines, i)
    lines[i], new = _merged_line(lines[i], widths, where)
    new_text = "".join(lines)
    config = yaml.safe_load(new_text)
    if config.get("grid", {}).get("width") != new:
        raise ParamsError(f"{where}: grid.width: the edited line does not parse to {new}; edit it by hand")
    validate_params(config, schema, source=where)
    if new_text != text:
        io.write_text(new_text, params_path)
    return new


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bachglass.adaptive",
        description="Propose new grid widths where the w_c* interval is widest; --apply appends them.",
    )
    parser.add_argument("--fits", default="results/fits.nc", help="fits.nc (default: %(default)s)")
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument("--schema", default=SCHEMA, help="its JSON schema (default: %(default)s)")
    parser.add_argument("--apply", action="store_true", help="append the proposals to grid.width")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Print the proposals (YAML on stdout); with ``--apply``, append them to grid.width."""
    args = _parser().parse_args(argv)
    if not Path(args.params).is_file():
        raise ParamsError(f"{args.params}: no such file; run from the repository root or pass --params")
    config = load_params(args.params)
    validate_params(config, args.schema, source=args.params)
    fits = io.read_netcdf(args.fits, required=FITS_VARIABLES)
    proposals, note = plan_widths(fits, config["grid"]["width"], config["adaptive"]["n_widths"])
    sys.stdout.write(format_proposals(proposals, note))
    if args.apply and proposals:
        new = apply_proposals(args.params, [p.width for p in proposals], args.schema)
        sys.stdout.write(f"# {args.params}: grid.width is now {new}\n")


if __name__ == "__main__":
    run_step(main)
