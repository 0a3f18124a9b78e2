"""The training-set-size study: N* of several studies' fits.nc against P, and gamma with its interval."""

import warnings

import numpy as np
import pytest
import xarray as xr

from bachglass import data_size
from bachglass.errors import DataError

P = [744, 1488, 2976, 5952]  # scored notes of 4, 8, 16, 32 chorales
N_BOOT = 200


def fits_file(tmp_path, p, n_star, scatter=0.05, seed=0, missing=0.0):
    """A fits.nc with N* at two depths and its replicas (log-normal, sd ``scatter``); some without."""
    rng = np.random.default_rng(seed)
    star = np.asarray(n_star, dtype=np.float64)
    boot = star * np.exp(scatter * rng.normal(size=(N_BOOT, star.size)))
    boot[: int(missing * N_BOOT)] = np.nan
    with warnings.catch_warnings():  # a depth without N* has no interval either
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanquantile(boot, [0.025, 0.975], axis=0)
    ds = xr.Dataset(
        {
            "n_star": ("depth", star),
            "n_star_lo": ("depth", lo),
            "n_star_hi": ("depth", hi),
            "n_star_boot": (("boot", "depth"), boot),
        },
        coords={"depth": [2, 3], "boot": np.arange(N_BOOT)},
        attrs={"n_scored_notes": p},
    )
    path = tmp_path / f"fits_{p}.nc"
    ds.to_netcdf(path)
    return path


def study(tmp_path, gamma, prefactor=2.0, **kwargs):
    return [
        fits_file(tmp_path, p, [prefactor * p**gamma, 1.2 * prefactor * p**gamma], seed=k, **kwargs)
        for k, p in enumerate(P)
    ]


@pytest.mark.parametrize("gamma", [1.0, 0.5])
def test_gamma_is_recovered_with_an_interval_that_holds_it(tmp_path, gamma):
    ds = data_size.data_size(study(tmp_path, gamma))
    assert ds["scored_notes"].values.tolist() == P
    np.testing.assert_allclose(ds["gamma"].values, [gamma, gamma], atol=1e-9)  # the point estimates are exact
    assert (ds["gamma_lo"] < gamma).all() and (ds["gamma_hi"] > gamma).all()
    assert (ds["gamma_hi"] - ds["gamma_lo"] < 0.2).all() and (ds["gamma_fraction"] == 1).all()


def test_a_study_without_w_c_star_in_a_third_of_its_replicas_leaves_gamma_unbounded(tmp_path):
    paths = study(tmp_path, 1.0)
    paths[0] = fits_file(tmp_path, P[0], [2.0 * P[0], 2.4 * P[0]], missing=0.3)
    ds = data_size.data_size(paths)
    assert np.isinf(ds["gamma_lo"]).all() and np.isinf(ds["gamma_hi"]).all()
    np.testing.assert_allclose(ds["gamma_fraction"].values, 0.7)


def test_gamma_is_fitted_over_the_sizes_with_n_star_and_needs_three(tmp_path):
    paths = study(tmp_path, 1.0)
    paths[1] = fits_file(tmp_path, P[1], [np.nan, 2.4 * P[1]])  # no w_c* at d = 2 for 8 chorales
    ds = data_size.data_size(paths)
    assert ds["gamma_sizes"].values.tolist() == [3, 4]
    np.testing.assert_allclose(ds["gamma"].values, [1.0, 1.0], atol=1e-9)
    paths[2] = fits_file(tmp_path, P[2], [np.nan, 2.4 * P[2]])
    ds = data_size.data_size(paths)
    assert np.isnan(float(ds["gamma"].sel(depth=2))) and np.isfinite(float(ds["gamma"].sel(depth=3)))
    assert np.isnan(data_size.data_size(study(tmp_path, 1.0)[:2])["gamma"]).all()  # two sizes: no slope


def test_a_depth_missing_from_one_study_and_unequal_replica_counts_are_aligned(tmp_path):
    paths = study(tmp_path, 1.0)
    with xr.open_dataset(paths[0]) as ds:
        only = ds.sel(depth=[3], boot=slice(0, N_BOOT // 2 - 1)).load()  # one depth, half the replicas
    only.to_netcdf(tmp_path / "only_d3.nc")
    ds = data_size.data_size([tmp_path / "only_d3.nc", *paths[1:]])
    assert ds.sizes["boot"] == N_BOOT // 2 and ds["gamma_sizes"].values.tolist() == [3, 4]
    with pytest.raises(DataError, match="same number of scored notes"):
        data_size.collect([paths[0], paths[0]])


def test_a_fits_file_without_p_is_named_in_the_error(tmp_path):
    path = fits_file(tmp_path, P[0], [1.0, 2.0])
    with xr.open_dataset(path) as ds:
        bare = ds.load()
    bare.attrs = {}
    bare.to_netcdf(tmp_path / "old.nc")
    with pytest.raises(DataError, match=r"old\.nc: no n_scored_notes"):
        data_size.collect([tmp_path / "old.nc"])


def test_the_command_writes_data_size_nc_and_the_figure(tmp_path, capsys):
    out, stem = tmp_path / "data_size.nc", tmp_path / "figures" / "data_size"
    data_size.main([*map(str, study(tmp_path, 1.0)), "--out", str(out), "--figure", str(stem)])
    with xr.open_dataset(out) as ds:
        assert {"gamma", "gamma_lo", "gamma_hi", "gamma_boot", "n_star"} <= set(ds.data_vars)
    assert stem.with_suffix(".png").stat().st_size > 0 and stem.with_suffix(".pdf").exists()
    assert "d2: P 744: N* 1488" in capsys.readouterr().out
