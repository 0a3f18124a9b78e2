"""Generalisation phases on synthetic accuracy curves whose phases and times are known by construction."""

import re

import numpy as np
import pytest
import xarray as xr

from bachglass import io
from bachglass.aging import AGING_VARS
from bachglass.critical import CRITICAL_VARS
from bachglass.errors import DataError
from bachglass.fits import ATTRS as FITS_ATTRS
from bachglass.phases import (
    COMPREHENSION,
    CONFUSION,
    GROKKING,
    MEMORISATION,
    UNDETERMINED,
    PhasesConfig,
    generalisation_phases,
    metrics,
)

STEPS = [0, 100, 500, 1000, 2000, 5000, 10000]
CONFIG = PhasesConfig(train_accuracy=0.9, heldout_fraction=0.9, grokking_gap=1000)
NAN = np.nan


def make_study(curves, seeds=(0, 1)):
    """Study with accuracy/heldout_accuracy (depth, width, seed, time) from {(d, w): (train, heldout)}.

    Each curve is one list over STEPS (the same for every seed) or one list per seed.
    """
    depths = sorted({d for d, _ in curves})
    widths = sorted({w for _, w in curves})
    shape = (len(depths), len(widths), len(seeds), len(STEPS))
    train, heldout = np.full(shape, NAN), np.full(shape, NAN)
    for (d, w), (tr, ho) in curves.items():
        i, j = depths.index(d), widths.index(w)
        train[i, j] = np.broadcast_to(np.asarray(tr, float), shape[2:])
        heldout[i, j] = np.broadcast_to(np.asarray(ho, float), shape[2:])
    dims = ("depth", "width", "seed", "time")
    return xr.Dataset(
        {"accuracy": (dims, train), "heldout_accuracy": (dims, heldout)},
        coords={
            "depth": depths,
            "width": widths,
            "seed": list(seeds),
            "time": ("time", np.asarray(STEPS) * 0.5, {"units": "epoch"}),
            "step": ("time", np.asarray(STEPS, dtype=np.int64), {"units": "SGD steps"}),
        },
    )


# (d, w): (train, held-out, expected phase, t_train, t_test); the best final held-out mean is 0.6
CASES = {
    (1, 4): (
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.5],
        [0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3],
        CONFUSION,
        np.inf,
        np.inf,
    ),
    (1, 8): (
        [0.1, 0.5, 0.8, 0.9, 0.95, 0.95, 0.95],
        [0.1, 0.2, 0.3, 0.4, 0.4, 0.4, 0.4],
        MEMORISATION,
        1000,
        np.inf,
    ),
    (1, 16): (
        [0.1, 0.5, 0.9, 0.95, 0.95, 0.95, 0.95],
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.545, 0.55],
        GROKKING,
        500,
        5000,
    ),
    (1, 32): (
        [0.1, 0.5, 0.9, 0.95, 0.99, 0.99, 0.99],
        [0.1, 0.2, 0.4, 0.6, 0.6, 0.6, 0.6],
        COMPREHENSION,
        500,
        1000,
    ),
    (2, 4): (  # gap exactly grokking_gap: still comprehension
        [0.1, 0.5, 0.8, 0.9, 0.95, 0.95, 0.95],
        [0.1, 0.2, 0.3, 0.4, 0.55, 0.56, 0.56],
        COMPREHENSION,
        1000,
        2000,
    ),
    (2, 8): (  # held-out before train (negative gap): comprehension
        [0.1, 0.5, 0.85, 0.9, 0.9, 0.9, 0.9],
        [0.1, 0.55, 0.55, 0.55, 0.55, 0.55, 0.55],
        COMPREHENSION,
        1000,
        100,
    ),
    (2, 16): (  # held-out reached, train never: confusion
        [0.1, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6],
        [0.1, 0.3, 0.55, 0.55, 0.55, 0.55, 0.55],
        CONFUSION,
        np.inf,
        500,
    ),
    (2, 32): (  # every seed diverged after step 500: no seed mean
        [0.1, 0.5, 0.95, NAN, NAN, NAN, NAN],
        [0.1, 0.3, 0.4, NAN, NAN, NAN, NAN],
        UNDETERMINED,
        NAN,
        NAN,
    ),
}


@pytest.fixture(scope="module")
def phases():
    study = make_study({key: case[:2] for key, case in CASES.items()})
    return generalisation_phases(study, CONFIG)


@pytest.mark.parametrize("key", list(CASES))
def test_each_designed_curve_gets_its_phase_and_times(phases, key):
    _, _, phase, t_train, t_test = CASES[key]
    at = phases.sel(depth=key[0], width=key[1])
    assert int(at["generalisation_phase"]) == phase
    np.testing.assert_equal(float(at["t_train"]), t_train)
    np.testing.assert_equal(float(at["t_test"]), t_test)


def test_threshold_is_fraction_of_the_best_final_seed_mean_heldout_accuracy(phases):
    assert float(phases["best_heldout_accuracy"]) == pytest.approx(0.6)
    assert float(phases["heldout_threshold"]) == pytest.approx(0.54)


def test_threshold_uses_the_seed_mean_not_the_best_seed_and_skips_diverged_seeds():
    curves = {
        (1, 4): ([0.5] * 7, [[0.1] * 6 + [0.8], [0.1] * 6 + [0.4]]),  # seed mean 0.6, best seed 0.8
        (1, 8): ([0.5] * 7, [[0.1] * 6 + [0.5], [0.1] * 5 + [0.9, NAN]]),  # seed 1 diverged
    }
    out = generalisation_phases(make_study(curves), CONFIG)
    assert float(out["best_heldout_accuracy"]) == pytest.approx(0.6)
    assert float(out["heldout_threshold"]) == pytest.approx(0.54)
    assert out["accuracy_n_seeds"].sel(depth=1).values.tolist() == [2, 1]


def test_per_run_phases_differ_from_the_seed_mean_phase():
    # seed 0 learns the training set, seed 1 stalls at 0.8: the mean (0.875) never reaches 0.9
    train = [[0.1, 0.5, 0.95, 0.95, 0.95, 0.95, 0.95], [0.1, 0.5, 0.8, 0.8, 0.8, 0.8, 0.8]]
    heldout = [0.1, 0.3, 0.6, 0.6, 0.6, 0.6, 0.6]
    out = generalisation_phases(make_study({(1, 8): (train, heldout)}), CONFIG).sel(depth=1, width=8)
    assert (
        int(out["generalisation_phase"]) == CONFUSION
        and np.isinf(out["t_train"])
        and float(out["t_test"]) == 500
    )
    assert out["run_generalisation_phase"].values.tolist() == [COMPREHENSION, CONFUSION]
    np.testing.assert_equal(out["run_t_train"].values, [500, np.inf])
    np.testing.assert_equal(out["run_t_test"].values, [500, 500])


def test_diverged_seed_is_left_out_of_the_mean_and_undetermined_when_it_missed_a_threshold():
    good = ([0.1, 0.5, 0.95, 0.95, 0.95, 0.95, 0.95], [0.1, 0.3, 0.4, 0.5, 0.6, 0.6, 0.6])
    broke_early = ([0.1, 0.2, NAN, NAN, NAN, NAN, NAN], [0.1, 0.2, NAN, NAN, NAN, NAN, NAN])
    broke_late = ([0.1, 0.5, 0.95, 0.95, 0.95, NAN, NAN], [0.1, 0.3, 0.4, 0.6, 0.6, NAN, NAN])
    curves = {(1, 8): tuple(list(seeds) for seeds in zip(good, broke_early, broke_late, strict=True))}
    out = generalisation_phases(make_study(curves, seeds=(0, 1, 2)), CONFIG).sel(depth=1, width=8)
    assert int(out["accuracy_n_seeds"]) == 1
    assert (float(out["t_train"]), float(out["t_test"]), int(out["generalisation_phase"])) == (
        500,
        2000,
        GROKKING,
    )
    assert out["run_diverged"].values.tolist() == [False, True, True]
    # seed 2 reached both thresholds before diverging: classified; seed 1 reached neither: undetermined
    assert out["run_generalisation_phase"].values.tolist() == [GROKKING, UNDETERMINED, COMPREHENSION]
    np.testing.assert_equal(out["run_t_train"].values, [500, np.inf, 500])


def test_study_diverged_flag_marks_a_run_even_without_nan_accuracy():
    curve = ([0.1, 0.5, 0.95, 0.95, 0.95, 0.95, 0.95], [0.1, 0.3, 0.4, 0.5, 0.5, 0.5, 0.5])
    study = make_study({(1, 8): curve})
    study["diverged"] = (("depth", "width", "seed"), np.array([[[False, True]]]))
    out = generalisation_phases(study, CONFIG)
    assert out["accuracy_n_seeds"].item() == 1 and out["run_diverged"].values.ravel().tolist() == [
        False,
        True,
    ]


def test_outputs_carry_cf_attrs_and_round_trip_through_io(phases, tmp_path):
    assert phases["generalisation_phase"].attrs["flag_meanings"] == (
        "undetermined comprehension grokking memorisation confusion"
    )
    assert list(phases["run_generalisation_phase"].attrs["flag_values"]) == [-1, 0, 1, 2, 3]
    assert phases["t_train"].attrs["units"] == "SGD steps"
    assert dict(phases["run_generalisation_phase"].sizes) == {"depth": 2, "width": 4, "seed": 2}
    assert (
        phases["generalisation_phase"].dims == ("depth", "width")
        and phases["generalisation_phase"].dtype == np.int8
    )
    assert phases.attrs["grokking_gap"] == 1000
    io.write_netcdf(phases, tmp_path / "phases.nc")
    xr.testing.assert_identical(io.read_netcdf(tmp_path / "phases.nc"), phases)


def test_without_heldout_chorales_every_phase_is_undetermined_and_t_train_still_measured(caplog):
    curves = {(1, 8): ([0.1, 0.5, 0.95, 0.95, 0.95, 0.95, 0.95], [NAN] * 7)}
    out = generalisation_phases(make_study(curves), CONFIG).sel(depth=1, width=8)
    assert float(out["t_train"]) == 500 and np.isnan(out["t_test"]) and np.isnan(out["heldout_threshold"])
    assert int(out["generalisation_phase"]) == UNDETERMINED and int(out["accuracy_n_seeds"]) == 2
    assert out["run_generalisation_phase"].values.tolist() == [UNDETERMINED] * 2
    assert not out["run_diverged"].any()
    assert "heldout_accuracy is NaN everywhere" in caplog.text


def test_output_names_do_not_clash_with_fits_nc_so_both_merge(phases):
    fits_names = {*FITS_ATTRS, *AGING_VARS, "diverged", "eps_valid", "mu_pair"}
    fits_names |= {f"{v}{s}" for v in CRITICAL_VARS for s in ("", "_lo", "_hi", "_boot")}
    assert not set(phases.data_vars) & fits_names
    fits_like = xr.Dataset({"phase": phases["accuracy_n_seeds"] * 0}, attrs={"data_floor": 0.1})
    merged = fits_like.merge(phases, combine_attrs="override")
    assert merged.attrs == {"data_floor": 0.1}  # the rule's settings then live on the phase variables
    assert merged["generalisation_phase"].attrs["grokking_gap"] == 1000


def test_metrics_list_the_widths_of_each_phase_per_depth(phases):
    out = metrics(phases)["generalisation_phases"]
    assert out["heldout_threshold"] == pytest.approx(0.54) and out["best_heldout_accuracy"] == 0.6
    assert out["d1"] == {
        "undetermined": [],
        "comprehension": [32],
        "grokking": [16],
        "memorisation": [8],
        "confusion": [4],
    }
    assert out["d2"]["comprehension"] == [4, 8] and out["d2"]["confusion"] == [16]
    assert out["d2"]["undetermined"] == [32]


@pytest.mark.parametrize("missing", ["accuracy", "heldout_accuracy"])
def test_missing_accuracy_variable_is_a_data_error_naming_it(missing):
    study = make_study({(1, 8): ([0.5] * 7, [0.5] * 7)}).drop_vars(missing)
    with pytest.raises(DataError, match=re.escape(f"results/study.nc: no variable '{missing}'; re-create")):
        generalisation_phases(study, CONFIG)


def test_accuracy_with_wrong_dims_is_a_data_error_naming_it():
    study = make_study({(1, 8): ([0.5] * 7, [0.5] * 7)}).isel(seed=0)
    with pytest.raises(DataError, match=re.escape("results/study.nc: accuracy has dims")):
        generalisation_phases(study, CONFIG)


def test_a_knocked_back_run_counts_only_its_accuracies_before_the_divergence():
    late = ([0.1, 0.3, 0.5, 0.6, 0.95, 0.95, 0.95], [0.1, 0.3, 0.4, 0.5, 0.6, 0.6, 0.6])  # train at 5000
    study = make_study({(1, 8): late})
    step = study["step"].values
    study["diverged"] = (("depth", "width", "seed"), np.array([[[False, True]]]))
    study["diverged_step"] = (("depth", "width", "seed"), np.array([[[-1, int(step[3])]]]))
    out = generalisation_phases(study, CONFIG).sel(depth=1, width=8)
    # seed 1 went above its initial loss before reaching 0.9: its later accuracy does not count
    assert out["run_t_train"].values.tolist() == [float(step[4]), np.inf]
    assert out["run_generalisation_phase"].values.tolist()[1] == UNDETERMINED
