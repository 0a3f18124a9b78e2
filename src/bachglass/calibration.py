"""Calibration of the science checks on synthetic studies with known truth, at the study's design.

A criterion is only as good as its power at the study's own design. Here every check is run, by
the pipeline's own fit and check code, on synthetic studies (:mod:`bachglass.synthetic`) generated
with the study's grid (depths, widths, seeds), checkpoint grid, budget (censoring), ε set, floors
and seed scatter: once where the paper's claim holds exactly, and once where it is broken in the
way that matters. A good criterion passes >= 90 % of the first and <= 10 % of the second. The
legacy criteria (:mod:`bachglass.legacy_checks`) are calibrated beside the current ones.

``python -m bachglass.calibration --studies 100`` writes the table of docs/calibration.md; the
tests run it at a small size. The truths (:class:`bachglass.synthetic.Truth`) are plain numbers,
stated with where they come from; they are the synthetic studies' inputs, never fitted to a verdict.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from bachglass import checks, io, legacy_checks
from bachglass.fits import OVER, UNDER
from bachglass.params import load_params
from bachglass.synthetic import (
    Design,
    Truth,
    aging_fits,
    critical_fits,
    floor_fits,
    phase_fits_of,
    tail_fits_of,
)


@dataclass(frozen=True)
class Scenario:
    """A synthetic study in which a check's claim holds (``claim``) or is broken (its negation)."""

    check: int
    name: str
    claim: bool
    truth: Truth
    make: Callable[[Design, Truth, np.random.Generator], xr.Dataset]
    judge: Callable[[xr.Dataset], checks.Check]
    legacy: Callable[[xr.Dataset], checks.Check]


def _aging(phase: int) -> Callable[[Design, Truth, np.random.Generator], xr.Dataset]:
    return lambda design, truth, rng: aging_fits(design, truth, rng, phase)


SCENARIOS = (
    Scenario(
        1,
        "power-law tails, alpha varies",
        True,
        Truth(),
        tail_fits_of,
        checks.power_law_tails,
        legacy_checks.power_law_tails,
    ),
    Scenario(
        1,
        "alpha the same for every net",
        False,
        Truth(alpha_range=(1.0, 1.0), alpha_depth=0.0),
        tail_fits_of,
        checks.power_law_tails,
        legacy_checks.power_law_tails,
    ),
    Scenario(
        1,
        "exponential tails",
        False,
        Truth(tail="exponential"),
        tail_fits_of,
        checks.power_law_tails,
        legacy_checks.power_law_tails,
    ),
    Scenario(
        2, "plateaus below w_c*", True, Truth(), phase_fits_of, checks.two_phases, legacy_checks.two_phases
    ),
    Scenario(
        2,
        "every net falls to the floor",
        False,
        Truth(under_height=0.0),
        phase_fits_of,
        checks.two_phases,
        legacy_checks.two_phases,
    ),
    Scenario(
        3,
        "tau = A/(w - w_c)",
        True,
        Truth(),
        critical_fits,
        checks.critical_slowing_down,
        legacy_checks.critical_slowing_down,
    ),
    Scenario(
        3,
        "nu = 2",
        False,
        Truth(nu=2.0),
        critical_fits,
        checks.critical_slowing_down,
        legacy_checks.critical_slowing_down,
    ),
    Scenario(
        4,
        "w_c shifts with eps",
        True,
        Truth(),
        critical_fits,
        checks.loss_dependent_w_c,
        legacy_checks.loss_dependent_w_c,
    ),
    Scenario(
        4,
        "no shift with eps",
        False,
        Truth(shift=0.0),
        critical_fits,
        checks.loss_dependent_w_c,
        legacy_checks.loss_dependent_w_c,
    ),
    Scenario(
        5,
        "w_c* falls by 2 widths",
        True,
        Truth(),
        critical_fits,
        checks.depth_dependence,
        legacy_checks.depth_dependence,
    ),
    Scenario(
        5,
        "w_c* falls by 4 widths",
        True,
        Truth(depth_drop=4.0),
        critical_fits,
        checks.depth_dependence,
        legacy_checks.depth_dependence,
    ),
    Scenario(
        5,
        "no depth effect",
        False,
        Truth(depth_drop=0.0),
        critical_fits,
        checks.depth_dependence,
        legacy_checks.depth_dependence,
    ),
    Scenario(
        6, "simple aging, mu = 1", True, Truth(), _aging(UNDER), checks.aging_under, legacy_checks.aging_under
    ),
    Scenario(
        6,
        "no aging, mu = 0",
        False,
        Truth(mu=0.0),
        _aging(UNDER),
        checks.aging_under,
        legacy_checks.aging_under,
    ),
    Scenario(
        7, "collapse breaks at t*", True, Truth(), _aging(OVER), checks.aging_over, legacy_checks.aging_over
    ),
    Scenario(
        7,
        "collapse holds throughout",
        False,
        Truth(freeze=False),
        _aging(OVER),
        checks.aging_over,
        legacy_checks.aging_over,
    ),
    Scenario(
        7,
        "restart: the floor drops with eta",
        True,
        Truth(),
        floor_fits,
        checks.restart_test,
        legacy_checks.restart_test,
    ),
    Scenario(
        7,
        "restart: a floor that does not move with eta",
        False,
        Truth(floor_kappa=0.0),
        floor_fits,
        checks.restart_test,
        legacy_checks.restart_test,
    ),
)


def calibrate(
    design: Design, studies: int, seed: int = 0, scenarios: Sequence[Scenario] = SCENARIOS
) -> list[dict]:
    """Pass rates of the current and legacy criteria over ``studies`` synthetic studies per scenario."""
    rows = []
    for sc in scenarios:  # each scenario its own stream, keyed by its place in SCENARIOS: append new ones
        rng = np.random.default_rng([seed, SCENARIOS.index(sc) if sc in SCENARIOS else len(SCENARIOS)])
        new = old = 0
        for _ in range(studies):
            fits = sc.make(design, sc.truth, rng)
            new += sc.judge(fits).passed
            old += sc.legacy(legacy_checks.legacy_view(fits)).passed  # on the old phases
        rows.append(
            {
                "check": sc.check,
                "scenario": sc.name,
                "claim": sc.claim,
                "new": new / studies,
                "old": old / studies,
                "studies": studies,
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: per scenario the pass rate of the current and the legacy criterion, and the target."""
    out = [
        "| check | synthetic truth | claim holds? | target | pass rate | pass rate, old criterion |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        target = ">= 90 %" if r["claim"] else "<= 10 %"
        ok = r["new"] >= 0.9 if r["claim"] else r["new"] <= 0.1
        out.append(
            f"| {r['check']} | {r['scenario']} | {'yes' if r['claim'] else 'no'} | {target} | "
            f"{r['new']:.0%}{'' if ok else ' (misses)'} | {r['old']:.0%} |"
        )
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None, scenarios: Sequence[Scenario] = SCENARIOS) -> None:
    """Calibrate every check at the design of a params file and print (or write) the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--studies", type=int, default=100, help="synthetic studies per scenario")
    parser.add_argument("--n-boot", type=int, default=None, help="bootstrap replicas (default: params)")
    parser.add_argument(
        "--data-floor", type=float, default=0.0037, help="nats/note (the default training set's)"
    )
    parser.add_argument("--floor-ref", type=float, default=0.043, help="SGD floor at the study's (eta, B)")
    parser.add_argument("--steps", type=int, default=None, help="budget (default: params' train.steps)")
    parser.add_argument("--checks", type=int, nargs="*", default=None, help="only these check numbers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the table here (Markdown)")
    args = parser.parse_args(argv)
    design = Design.from_params(load_params(args.params), args.data_floor, args.floor_ref)
    if args.steps:
        design = dataclasses.replace(design, steps=args.steps)
    if args.n_boot:
        design = dataclasses.replace(design, fits=dataclasses.replace(design.fits, n_boot=args.n_boot))
    if args.checks:
        scenarios = [s for s in scenarios if s.check in args.checks]
    text = table(calibrate(design, args.studies, args.seed, scenarios))
    if args.out:
        io.write_text(text, args.out)
    print(text, end="")


if __name__ == "__main__":
    main()
