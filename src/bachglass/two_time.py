"""Two-time observables of a parameter trajectory: displacement moments, overlap, cosine, relaxation.

For a waiting time τ_w (a checkpoint) and every checkpoint t' >= τ_w, with Δθ_i = θ_i(t') − θ_i(τ_w)
over all N parameters (weights and biases), in float64 (the early differences of float32 snapshots
are tiny):

- ``msd``      Δ = mean Δθ²  (Hertz & Tyrcha; Baity-Jesi et al. 2018, who call it C(tw, tw+t))
- ``quartic``  D = mean Δθ⁴, and ``y_ratio`` Y = D/Δ² (Baity-Jesi et al.; 3 for Gaussian Δθ)
- ``alpha2``   α₂ = (D − 3Δ²)/(3Δ²), the non-Gaussian parameter (Kerr Winter & Janssen; 0 for Gaussian Δθ)
- ``overlap``  Q = mean 1[|Δθ| < ε], ε = std θ(τ_w) / f (Kerr Winter & Janssen, who have no biases)
- ``cosine``   C = θ(τ_w)·θ(t') / (|θ(τ_w)| |θ(t')|)

The layout is the absolute-time one of docs/science.md §1.7f (v2): dims (..., tau_w, time), NaN for
t' < τ_w, the lag t' − τ_w as the coordinate ``time_since_tau_w``; per parameter group the dims are
(..., group, tau_w, time). At t' = τ_w: Δ = D = 0, Y and α₂ are NaN (0/0), Q = 1 (when ε > 0) and
C = 1 exactly. :func:`on_lag_grid` puts any of them on a common lag grid (v1 convention, aging
collapse vs τ/τ_w) and :func:`relaxation_time` reads τ_e and τ_90 off Q.
"""

from collections.abc import Sequence

import numpy as np
import xarray as xr

LAG_COORD = "time_since_tau_w"  # t' - tau_w, (tau_w, time); `lag` itself is on_lag_grid's dimension
SUMS = ("msd", "quartic", "overlap", "cosine")  # one value per (part, t'); `eps` is one per part
Part = slice | np.ndarray  # the parameters of a group: a slice when contiguous, else their indices


def _parts(labels: np.ndarray | None) -> tuple[np.ndarray, list[Part]]:
    """Sorted group names and the parameters of all (first) and of each group."""
    if labels is None:
        return np.array([], dtype=str), [slice(None)]
    names = np.unique(labels)
    parts: list[Part] = [slice(None)]
    for name in names:
        idx = np.flatnonzero(labels == name)
        contiguous = idx[-1] - idx[0] + 1 == idx.size  # a view, no copy (the model's groups are)
        parts.append(slice(int(idx[0]), int(idx[-1]) + 1) if contiguous else idx)
    return names, parts


def _moments_since(theta: np.ndarray, k0: int, parts: list[Part], f: float) -> dict[str, np.ndarray]:
    """Δ, D, Q, C (each (L, P, K - k0)) and ε ((L, P)) of every part since checkpoint ``k0``.

    One pass over the (L, K - k0, N) block: the displacement and its powers are formed once and
    summed per part. Q is NaN where Δ is (a diverged checkpoint), not 0. Δ keeps the bytes it had
    when it was computed alone (xarray means): the total is summed along the contiguous param
    axis (numpy's pairwise sum), a group's Δ param by param, as xarray's groupby did.
    """
    ref, later = theta[:, k0 : k0 + 1], theta[:, k0:]  # (L, 1, N), (L, K', N)
    diff = later - ref
    sq = np.square(diff)
    quartic = np.square(sq)
    dot = later * ref
    dist = np.abs(diff, out=diff)
    out: dict[str, list[np.ndarray]] = {name: [] for name in (*SUMS, "eps")}
    by_param = np.moveaxis(sq, -1, 0).copy() if len(parts) > 1 else sq  # (N, L, K')
    for j, part in enumerate(parts):
        n = theta[0, 0, part].size
        eps = np.std(ref[..., part], axis=-1) / f  # (L, 1)
        s2 = sq.sum(-1) if j == 0 else by_param[part].sum(0)
        close = np.count_nonzero(dist[..., part] < eps[..., None], axis=-1)
        norm2 = np.square(later[..., part]).sum(-1)  # same arithmetic as dot: C(τ_w, τ_w) = 1 exactly
        with np.errstate(divide="ignore", invalid="ignore"):
            cosine = dot[..., part].sum(-1) / np.sqrt(norm2 * norm2[:, :1])
        out["msd"].append(s2 / n)
        out["quartic"].append(quartic[..., part].sum(-1) / n)
        out["overlap"].append(np.where(np.isfinite(s2), close / n, np.nan))
        out["cosine"].append(cosine)
        out["eps"].append(eps[:, 0])
    return {name: np.stack(values, axis=1) for name, values in out.items()}


def _checkpoint(step: np.ndarray, tau_w: int) -> int:
    """Index of the checkpoint at step ``tau_w`` (which must be one)."""
    k = np.flatnonzero(step == tau_w)
    if k.size != 1:
        raise ValueError(f"tau_w {tau_w} is not a checkpoint step; snap_to_grid it first")
    return int(k[0])


def _all_moments(
    theta: np.ndarray, step: np.ndarray, tau_w: np.ndarray, parts: list[Part], f: float
) -> dict[str, np.ndarray]:
    """Stack :func:`_moments_since` over τ_w: (L, P, T, K), NaN for t' < τ_w; ε (L, P, T); Y and α₂."""
    n_lead, n_time = theta.shape[0], theta.shape[1]
    out = {name: np.full((n_lead, len(parts), tau_w.size, n_time), np.nan) for name in SUMS}
    out["eps"] = np.full((n_lead, len(parts), tau_w.size), np.nan)
    for j, value in enumerate(tau_w):
        k0 = _checkpoint(step, int(value))
        since = _moments_since(theta, k0, parts, f)
        for name in SUMS:
            out[name][:, :, j, k0:] = since[name]
        out["eps"][:, :, j] = since["eps"]
    with np.errstate(divide="ignore", invalid="ignore"):
        out["y_ratio"] = out["quartic"] / out["msd"] ** 2
        out["alpha2"] = (out["quartic"] - 3 * out["msd"] ** 2) / (3 * out["msd"] ** 2)
    return out


def two_time_observables(
    theta: xr.DataArray,
    tau_w_steps: Sequence[int],
    overlap_f: float,
    groups: xr.DataArray | np.ndarray | None = None,
) -> xr.Dataset:
    """Δ, D, Y, α₂, Q (with its ε), C since each τ_w; with ``groups`` also per group.

    ``theta`` has dims (..., time, param) and a ``step`` coordinate; every ``tau_w_steps`` must be a
    checkpoint step (snap_to_grid them). ε = std(θ(τ_w)) / ``overlap_f`` (population std over all
    parameters, resp. over the group's for ``overlap_group``). ``groups`` labels each parameter;
    the group variables (``msd_group``, ``quartic_group``, ``alpha2_group``, ``overlap_group``,
    ``overlap_eps_group``, ``cosine_group``) get a ``group`` dim of sorted labels. A parameter
    vector of zero norm has C = NaN; ε = 0 (all parameters equal) gives Q = 0.
    """
    step = theta["step"].values
    lead = [d for d in theta.dims if d not in ("time", "param")]
    shape = [theta.sizes[d] for d in lead]
    values = theta.transpose(*lead, "time", "param").values.astype(np.float64)
    names, parts = _parts(None if groups is None else np.asarray(groups))
    tau_w = np.asarray(tau_w_steps, dtype=np.int64)
    sums = _all_moments(values.reshape(-1, *values.shape[-2:]), step, tau_w, parts, overlap_f)
    out = {}
    for name, array in sums.items():
        key = "overlap_eps" if name == "eps" else name
        tail = ("tau_w", "time")[: array.ndim - 2]
        array = np.moveaxis(array, 1, 0).reshape(len(parts), *shape, *array.shape[2:])  # (P, ..., tail)
        out[key] = xr.DataArray(array[0], dims=(*lead, *tail))
        if names.size and name != "y_ratio":
            out[f"{key}_group"] = xr.DataArray(
                np.moveaxis(array[1:], 0, len(lead)), dims=(*lead, "group", *tail)
            )
    coords = {k: c for k, c in theta.coords.items() if "param" not in c.dims}
    coords |= {"tau_w": tau_w, LAG_COORD: (("tau_w", "time"), step[None, :] - tau_w[:, None])}
    return xr.Dataset(out, coords=coords | ({"group": names} if names.size else {}))


def msd(theta: xr.DataArray, tau_w_steps: Sequence[int], groups: xr.DataArray | None = None) -> xr.DataArray:
    """Two-time mean-square displacement Δ(τ_w, t') = mean_i (θ_i(t') - θ_i(τ_w))².

    Dims (..., tau_w, time), or (..., group, tau_w, time) within each of ``groups``: the ``msd``
    (``msd_group``) of :func:`two_time_observables`, for when only Δ is wanted.
    """
    pair = two_time_observables(theta, tau_w_steps, overlap_f=1.0, groups=groups)
    return pair["msd" if groups is None else "msd_group"]


def _first_crossing(q: np.ndarray, lag: np.ndarray, fraction: float) -> np.ndarray:
    """Lag at which each series q (..., K) first drops below ``fraction`` × q(lag 0); see relaxation_time."""
    q0 = np.where(lag == 0, q, 0.0).sum(-1)  # one lag-0 checkpoint per series; NaN stays NaN
    threshold = fraction * q0
    with np.errstate(invalid="ignore"):
        below = (lag > 0) & (q < threshold[..., None])
    j = np.argmax(below, axis=-1)[..., None]  # first checkpoint below; the one before is not
    i = np.maximum(j - 1, 0)
    qa, qb = (np.take_along_axis(q, k, -1)[..., 0] for k in (i, j))
    a, b = (np.take_along_axis(lag, k, -1)[..., 0] for k in (i, j))
    with np.errstate(divide="ignore", invalid="ignore"):
        f = (threshold - qa) / (qb - qa)
        tau = np.where(a > 0, a ** (1 - f) * b**f, f * b)  # linear in log lag; from lag 0 linear in lag
    complete = (np.isfinite(q) | (lag < 0)).all(-1)  # not reached: censored (+inf) or diverged (NaN)
    return np.where(below.any(-1), tau, np.where(complete, np.inf, np.nan))


def relaxation_time(overlap: xr.DataArray, fraction: float) -> xr.DataArray:
    """Lag t' − τ_w (SGD steps) at which Q(τ_w, t') first drops below ``fraction`` × Q(τ_w, τ_w).

    τ_e is ``fraction`` = 1/e, τ_90 is 0.9 (Kerr Winter & Janssen). Between the two checkpoints that
    bracket the crossing, Q is interpolated linearly in log(lag): Q decays like a power of the lag
    (free diffusion: erf(ε/√(2σ²τ)) ~ τ^-1/2), so log lag is the natural axis, as for the grid. From
    lag 0 to the first checkpoint after τ_w, which has no logarithm, it is linear in lag. Unlike
    Kerr Winter & Janssen we keep τ < 4 steps, but there the integer-step grid is coarse (a crossing
    within the first lag is an interpolation over [0, lag₁]). Never below: +inf (right-censored by
    the end of the run); never below while some Q since τ_w is missing (a diverged run): NaN.
    """
    q = overlap.transpose(..., "tau_w", "time")
    lag = np.broadcast_to(q[LAG_COORD].transpose("tau_w", "time").values.astype(np.float64), q.shape)
    tau = _first_crossing(q.values, lag, fraction)
    coords = {k: c for k, c in q.coords.items() if "time" not in c.dims}
    return xr.DataArray(tau, dims=q.dims[:-1], coords=coords)


def _interp_in_log_lag(x: np.ndarray, y: np.ndarray, xi: np.ndarray, log_values: bool) -> np.ndarray:
    """Interpolate y (along its last axis) linearly in log x, and in log y too if ``log_values``.

    NaN outside [x0, x-1]. The log-log form is written y_i^(1-f) y_(i+1)^f so that Δ = 0 (a frozen
    net) interpolates to 0, not NaN; the linear one takes y_i itself at a node (f = 0).
    """
    out = np.full((*y.shape[:-1], xi.size), np.nan)
    if x.size == 0:
        return out
    inside = (xi >= x[0]) & (xi <= x[-1])
    if x.size == 1:
        out[..., inside] = y[..., :1]
        return out
    i = np.clip(np.searchsorted(x, xi[inside], side="right") - 1, 0, x.size - 2)
    f = (np.log(xi[inside]) - np.log(x[i])) / (np.log(x[i + 1]) - np.log(x[i]))
    lo, hi = y[..., i], y[..., i + 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        out[..., inside] = (
            lo ** (1 - f) * hi**f if log_values else np.where(f == 0, lo, (1 - f) * lo + f * hi)
        )
    return out


def on_lag_grid(two_time: xr.DataArray, lags: Sequence[int], *, log_values: bool = True) -> xr.DataArray:
    """Put a two-time quantity on a common log-spaced grid of lags τ (v1 convention), interpolating in log τ.

    A common grid lets runs and τ_w be compared and averaged (aging collapse vs τ/τ_w). With
    ``log_values`` (Δ, D) the interpolation is log-log, exact for a power law; without (Q, C, which
    may be 0 or negative) it is linear in log τ. Lag 0 (no logarithm) is excluded; lags outside a
    τ_w's measured range are NaN.
    """
    lags = np.asarray(lags, dtype=np.int64)
    lead = [d for d in two_time.dims if d not in ("tau_w", "time")]
    m = two_time.transpose(*lead, "tau_w", "time")
    lag2d = m[LAG_COORD].transpose("tau_w", "time").values
    out = np.full((*m.shape[:-1], lags.size), np.nan)
    for j in range(m.sizes["tau_w"]):
        keep = lag2d[j] > 0
        out[..., j, :] = _interp_in_log_lag(lag2d[j, keep], m.values[..., j, keep], lags, log_values)
    coords = {k: c for k, c in m.coords.items() if "time" not in c.dims}
    return xr.DataArray(out, dims=(*lead, "tau_w", "lag"), coords={**coords, "lag": lags})
