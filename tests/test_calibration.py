"""The calibration harness, at a small size: synthetic studies judged by the pipeline's own code."""

import dataclasses

import numpy as np
import pytest

from bachglass import calibration, synthetic
from bachglass.params import load_params


@pytest.fixture(scope="module")
def design():
    """The default study's design with fewer bootstrap replicas (the harness's own cost)."""
    base = synthetic.Design.from_params(load_params("params.yaml"), data_floor=0.0037, floor_ref=0.043)
    return dataclasses.replace(base, fits=dataclasses.replace(base.fits, n_boot=20))


def scenarios(check):
    return [s for s in calibration.SCENARIOS if s.check == check]


def assert_separates(rows):
    """The claim passes in >= 3/4 of the studies, its negation in <= 1/4."""
    for row in rows:
        assert row["new"] >= 0.75 if row["claim"] else row["new"] <= 0.25, row


def test_every_check_has_a_claim_and_a_negation():
    for check in (1, 2, 3, 4, 5, 6, 7):
        assert {s.claim for s in scenarios(check)} == {True, False}, check


def test_synthetic_learning_times_follow_the_truth_on_the_checkpoint_grid(design):
    truth = synthetic.Truth(scatter=0.0, jitter=0.0)
    study = synthetic.tau_study(design, truth, np.random.default_rng(0))
    tau = study["tau"].isel(depth=0, seed=0).sel(eps=0.3)
    grid = set(study["step"].values.tolist())
    w_c = truth.w_c_star - truth.shift * 0.3
    for w, t in zip(study["width"].values, tau.values, strict=True):
        exact = truth.amplitude / (w - w_c) if w > w_c else np.inf
        if exact > design.steps:
            assert np.isinf(t)
        else:  # the first checkpoint at or after the crossing, as the pipeline reads it
            assert t in grid and exact <= t <= exact * 10 ** (1 / design.per_decade)


def test_check_3_tells_nu_1_from_nu_2_where_the_design_allows(design):
    # a five-times longer budget: the nearest widths reach eps within 1-4 widths of w_c
    long = dataclasses.replace(design, steps=350_000)
    rows = calibration.calibrate(long, studies=4, scenarios=scenarios(3))
    assert_separates(rows)


def test_check_1_tells_power_law_tails_from_an_exponential_approach_when_runs_have_tails(design):
    # drops 14x earlier than the default truth's: most nets have a tail of a decade or more. (One
    # alpha for every net, the other negation, is docs/calibration.md's table.)
    fast = [dataclasses.replace(s, truth=dataclasses.replace(s.truth, drop_scale=2e3)) for s in scenarios(1)]
    rows = calibration.calibrate(design, studies=2, scenarios=[fast[0], fast[2]])
    assert [(r["scenario"], r["new"]) for r in rows] == [
        ("power-law tails, alpha varies", 1.0),
        ("exponential tails", 0.0),
    ]


def test_check_2_finds_the_plateaus_when_the_nets_get_there_within_the_budget(design):
    # drops 14x earlier than the default truth's: every net reaches its plateau before the end
    fast = [dataclasses.replace(s, truth=dataclasses.replace(s.truth, drop_scale=2e3)) for s in scenarios(2)]
    assert_separates(calibration.calibrate(design, studies=1, scenarios=fast))


def test_the_restart_test_tells_a_floor_that_drops_with_eta_when_the_restarts_get_to_it(design):
    # floor runs 40x faster than the default truth's and restarts 100x longer: each settles on its floor
    restarts = [s for s in scenarios(7) if s.make is synthetic.floor_fits]
    fast = [dataclasses.replace(s, truth=dataclasses.replace(s.truth, floor_scale=3.0)) for s in restarts]
    long = dataclasses.replace(design, floor=dataclasses.replace(design.floor, restart_steps=4_000_000))
    rows = calibration.calibrate(long, studies=1, scenarios=fast)
    assert [(r["claim"], r["new"]) for r in rows] == [(True, 1.0), (False, 0.0)]


@pytest.mark.parametrize("check", [6, 7])
def test_the_aging_criteria_tell_the_claim_from_its_negation_without_seed_noise(design, check):
    collapse = [s for s in scenarios(check) if s.make is not synthetic.floor_fits]  # not the restart test
    quiet = [dataclasses.replace(s, truth=dataclasses.replace(s.truth, aging_noise=0.0)) for s in collapse]
    rows = calibration.calibrate(design, studies=1, scenarios=quiet)
    assert_separates(rows)


@pytest.mark.parametrize("check", [4, 5])
def test_checks_4_and_5_can_pass_when_the_claim_holds_and_the_design_allows(design, check):
    long = dataclasses.replace(design, steps=350_000)
    claim = [s for s in scenarios(check) if s.claim][:1]
    assert calibration.calibrate(long, studies=2, scenarios=claim)[0]["new"] > 0


def test_the_table_names_the_target_and_flags_a_criterion_that_misses_it():
    rows = [
        {"check": 3, "scenario": "tau = A/(w - w_c)", "claim": True, "new": 0.0, "old": 0.0, "studies": 10},
        {"check": 3, "scenario": "nu = 2", "claim": False, "new": 0.05, "old": 0.0, "studies": 10},
    ]
    text = calibration.table(rows)
    assert "| 3 | tau = A/(w - w_c) | yes | >= 90 % | 0% (misses) | 0% |" in text
    assert "| 3 | nu = 2 | no | <= 10 % | 5% | 0% |" in text


def test_the_command_writes_the_table(tmp_path, capsys):
    out = tmp_path / "calibration.md"
    keep = [s for s in calibration.SCENARIOS if s.check == 6]
    calibration.main(["--studies", "1", "--n-boot", "10", "--out", str(out)], scenarios=keep)
    assert out.read_text() == capsys.readouterr().out
    assert out.read_text().count("\n") == 2 + len(keep)
