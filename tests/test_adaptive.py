"""Adaptive widths: known intervals give known proposals; params.yaml keeps every other byte."""

import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from conftest import fits_config

from bachglass import io
from bachglass.adaptive import (
    apply_proposals,
    plan_widths,
    propose_from_files,
    propose_widths,
    write_proposals,
)
from bachglass.critical import critical
from bachglass.errors import DataError, ParamsError
from bachglass.params import load_params, validate_params

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "params.schema.yaml"
GRID = [4, 6, 8, 10, 11, 12, 13, 14, 15, 16, 18, 20, 24, 32]
EPS = (0.1, 0.05, 0.03)


def make_fits(star, eps_ci=None, depths=(1, 2, 3)):
    """A fits Dataset with fits.nc's names: w_c* intervals {depth: (lo, hi)}, w_c {(depth, eps): (lo, hi)}.

    Depths and (depth, eps) not given have no fit (NaN).
    """
    lo, hi = np.full(len(depths), np.nan), np.full(len(depths), np.nan)
    for d, (a, b) in star.items():
        lo[depths.index(d)], hi[depths.index(d)] = a, b
    w_lo, w_hi = np.full((len(depths), len(EPS)), np.nan), np.full((len(depths), len(EPS)), np.nan)
    for (d, e), (a, b) in (eps_ci or {}).items():
        w_lo[depths.index(d), EPS.index(e)], w_hi[depths.index(d), EPS.index(e)] = a, b
    de = ("depth", "eps")
    return xr.Dataset(
        {
            "w_c_star": ("depth", (lo + hi) / 2),
            "w_c_star_lo": ("depth", lo),
            "w_c_star_hi": ("depth", hi),
            "w_c": (de, (w_lo + w_hi) / 2),
            "w_c_lo": (de, w_lo),
            "w_c_hi": (de, w_hi),
        },
        coords={"depth": list(depths), "eps": list(EPS)},
        attrs={"ci": 0.95},
    )


# depth 1 has the widest interval: points 16.5 | 18 20 24 | 31, gaps 1.5 2 4 7
KNOWN = make_fits({1: (16.5, 31.0), 2: (11.2, 13.8), 3: (9.5, 15.5)})


def widths_of(proposals):
    return [p.width for p in proposals]


def test_widest_interval_gets_widths_in_its_largest_gaps_in_order():
    proposals = propose_widths(KNOWN, GRID, 3)
    # (24, 31) -> 27 (27.5: tie to the lower); then (20, 24) and (27, 31) tie at 4 -> the lower: 22; then 29
    assert widths_of(proposals) == [27, 22, 29]
    assert {(p.depth, p.lo, p.hi, p.source) for p in proposals} == {(1, 16.5, 31.0, "w_c*")}
    assert "(24, 31)" in proposals[0].reason and "rank 1 of 3" in proposals[0].reason


def test_next_depth_once_the_widest_interval_has_no_free_integer():
    fits = make_fits({1: (16.5, 19.5), 2: (3.0, 9.0), 3: (9.5, 15.0)})
    proposals = propose_widths(fits, GRID, 6)
    # depth 2 (6 wide, cut to the grid's [4, 9]): 5, 7, then the end 9; depth 3 (5.5 wide): 10-15 all
    # taken; depth 1: 17, 19
    assert widths_of(proposals) == [5, 7, 9, 17, 19]
    assert [p.depth for p in proposals] == [2, 2, 2, 1, 1]
    assert "cut to the grid's range [4, 9]" in proposals[0].reason


def test_an_interval_beyond_the_grid_is_cut_to_its_range():
    """A bootstrap tail to w = 400 must not propose w = 216: new widths stay within the grid's range."""
    proposals = propose_widths(make_fits({1: (9.0, 400.0), 2: (-30.0, 14.5)}), GRID, 4)
    assert all(min(GRID) < p.width < max(GRID) for p in proposals), widths_of(proposals)
    assert len(proposals) == 4 and all("cut to the grid's range" in p.reason for p in proposals)


def test_existing_widths_are_never_proposed_and_a_short_plan_says_why(caplog):
    grid = [4, 8, 12, 13, 14, 16, 32]
    fits = make_fits({1: (11.0, 17.0)})
    with caplog.at_level(logging.WARNING, logger="bachglass.adaptive"):
        proposals, note = plan_widths(fits, grid, 5)
    assert widths_of(proposals) == [15, 11, 17]
    assert not set(widths_of(proposals)) & set(grid)
    assert "3 of 5 widths" in note and "3 of 5 widths" in caplog.text


def test_without_a_finite_w_c_star_the_smallest_eps_with_an_interval_is_used():
    eps_ci = {(1, 0.1): (20.5, 29.9), (2, 0.05): (16.2, 19.8)}  # eps 0.03 has no interval anywhere
    proposals, note = plan_widths(make_fits({}, eps_ci), GRID, 3)
    assert widths_of(proposals) == [17, 19]
    assert {p.source for p in proposals} == {"w_c(eps=0.05)"} and {p.depth for p in proposals} == {2}
    assert "no finite w_c* interval" in note and "w_c(eps=0.05)" in note


def test_nothing_finite_proposes_nothing_and_logs_and_writes_the_reason(caplog, tmp_path):
    fits = make_fits({1: (np.nan, 14.0)}, {(2, 0.03): (np.inf, np.inf)})
    with caplog.at_level(logging.WARNING, logger="bachglass.adaptive"):
        assert propose_widths(fits, GRID, 3) == []
    assert "no finite w_c* or w_c(eps) interval" in caplog.text
    io.write_netcdf(fits, tmp_path / "fits.nc")
    assert propose_from_files(tmp_path / "fits.nc", GRID, 3, tmp_path / "proposed.yaml") == []
    doc = yaml.safe_load((tmp_path / "proposed.yaml").read_text())
    assert doc["widths"] == [] and doc["proposals"] == []
    assert doc["basis"].startswith("no finite w_c* or w_c(eps) interval")


def test_proposals_yaml_lists_sorted_widths_and_each_reason_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "out" / "proposed_widths.yaml"
    proposals, note = plan_widths(KNOWN, GRID, 3)
    write_proposals(proposals, path, note)
    doc = yaml.safe_load(path.read_text())
    assert doc["widths"] == [22, 27, 29]
    assert doc["basis"] == "95% seed-bootstrap intervals of w_c* (eps -> 0)"
    assert doc["proposals"][0] == {
        "width": 27,
        "depth": 1,
        "interval": [16.5, 31.0],
        "source": "w_c*",
        "reason": proposals[0].reason,
    }
    assert [p.name for p in path.parent.iterdir()] == ["proposed_widths.yaml"]


def test_proposals_from_the_real_critical_fit_lie_in_its_widest_w_c_star_interval():
    from test_critical import REL, tau_study

    fits = critical(tau_study(noise=3 * REL), xr.DataArray(True), fits_config(n_boot=20))
    grid = [8, 12, 16, 20, 24]  # no width near w_c* = 14 (depth 1) and 10 (depth 2)
    proposals = propose_widths(fits, grid, 2)
    ci = (fits["w_c_star_hi"] - fits["w_c_star_lo"]).to_series()
    assert ci.max() >= 1  # the widest interval holds a free integer, so it is served first
    assert proposals and proposals[0].depth == ci.idxmax()
    for p in proposals:
        lo, hi = (float(fits[f"w_c_star_{end}"].sel(depth=p.depth)) for end in ("lo", "hi"))
        assert (p.lo, p.hi) == (lo, hi) and lo <= p.width <= hi and p.width not in grid


def test_missing_fits_variable_is_a_data_error_naming_it():
    with pytest.raises(DataError, match="fits: no variable 'w_c_star_hi'; re-create it"):
        propose_widths(KNOWN.drop_vars("w_c_star_hi"), GRID, 3)


@pytest.fixture
def params_copy(tmp_path):
    path = tmp_path / "params.yaml"
    shutil.copyfile(REPO / "params.yaml", path)
    return path


def grid_width_index(lines):
    start = lines.index("grid:\n")
    return next(i for i in range(start, len(lines)) if lines[i].lstrip().startswith("width:"))


def test_apply_changes_only_the_grid_width_line_and_the_result_validates(params_copy):
    before = params_copy.read_text().splitlines(keepends=True)
    old = load_params(params_copy)["grid"]["width"]
    new = apply_proposals(params_copy, [29, 22, 27], SCHEMA)
    after = params_copy.read_text().splitlines(keepends=True)
    assert new == sorted({*old, 22, 27, 29})
    i = grid_width_index(before)
    assert len(after) == len(before)
    assert [k for k, (a, b) in enumerate(zip(before, after, strict=True)) if a != b] == [i]
    listed = "[" + ", ".join(map(str, new)) + "]"
    assert after[i] == re.sub(r"\[[^\]]*\]", listed, before[i], count=1)  # indent and comment kept
    config = load_params(params_copy)
    assert config["grid"]["width"] == new
    validate_params(config, SCHEMA)


def test_apply_twice_changes_nothing_the_second_time(params_copy):
    apply_proposals(params_copy, [22], SCHEMA)
    once = params_copy.read_bytes()
    apply_proposals(params_copy, [22], SCHEMA)
    assert params_copy.read_bytes() == once


@pytest.mark.parametrize(
    ("line", "what"),
    [
        ("  width: [4, 8,\n          16]  # split\n", "'width: [4, 8,' is not a single-line flow list"),
        ("  width: [4, 8.5]\n", "[4, 8.5] is not a list of integers"),
    ],
)
def test_malformed_width_line_is_a_params_error_and_the_file_is_untouched(params_copy, line, what):
    text = params_copy.read_text()
    lines = text.splitlines(keepends=True)
    i = grid_width_index(lines)
    bad = "".join([*lines[:i], line, *lines[i + 1 :]])
    params_copy.write_text(bad)
    with pytest.raises(ParamsError, match=re.escape(f"{params_copy}: grid.width: ") + ".*" + re.escape(what)):
        apply_proposals(params_copy, [22], SCHEMA)
    assert params_copy.read_text() == bad


def test_a_block_style_width_list_becomes_one_flow_line(params_copy):
    """What yaml.safe_dump writes (the tests' params files): the items' lines become one flow line."""
    lines = params_copy.read_text().splitlines(keepends=True)
    i = grid_width_index(lines)
    params_copy.write_text("".join([*lines[:i], "  width:  # block\n    - 4\n    - 8\n", *lines[i + 1 :]]))
    assert apply_proposals(params_copy, [6], SCHEMA) == [4, 6, 8]
    after = params_copy.read_text().splitlines(keepends=True)
    assert after[i] == "  width: [4, 6, 8]  # block\n"
    assert [*after[:i], *after[i + 1 :]] == [*lines[:i], *lines[i + 1 :]]


def test_apply_that_breaks_the_schema_is_refused_and_the_file_is_untouched(params_copy):
    text = params_copy.read_text()
    with pytest.raises(ParamsError, match=re.escape(f"{params_copy}: grid.width.0: 0 is less than")):
        apply_proposals(params_copy, [0], SCHEMA)
    assert params_copy.read_text() == text


def copy_project(tmp_path, fits):
    """params.yaml, the schema and results/fits.nc laid out like the repository."""
    shutil.copyfile(REPO / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "workflow" / "schemas").mkdir(parents=True)
    shutil.copyfile(SCHEMA, tmp_path / "workflow" / "schemas" / "params.schema.yaml")
    io.write_netcdf(fits, tmp_path / "results" / "fits.nc")


def adaptive_cli(cwd, *args):
    cmd = [sys.executable, "-m", "bachglass.adaptive", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_cli_prints_proposals_and_apply_appends_them(tmp_path):
    copy_project(tmp_path, KNOWN)
    config = load_params(tmp_path / "params.yaml")
    expected = widths_of(propose_widths(KNOWN, config["grid"]["width"], config["adaptive"]["n_widths"]))
    dry = adaptive_cli(tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert yaml.safe_load(dry.stdout)["widths"] == sorted(expected)
    assert load_params(tmp_path / "params.yaml") == config  # without --apply nothing changes
    done = adaptive_cli(tmp_path, "--fits", "results/fits.nc", "--params", "params.yaml", "--apply")
    assert done.returncode == 0, done.stderr
    assert load_params(tmp_path / "params.yaml")["grid"]["width"] == sorted(
        {*config["grid"]["width"], *expected}
    )


def test_cli_without_fits_fails_in_one_line_naming_the_file(tmp_path):
    copy_project(tmp_path, KNOWN)
    out = adaptive_cli(tmp_path, "--fits", "results/missing.nc")
    assert out.returncode == 1
    assert "results/missing.nc: not a readable NetCDF file" in out.stderr and "Traceback" not in out.stderr
