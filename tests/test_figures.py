import itertools
import logging

import numpy as np
import pytest
import xarray as xr
from conftest import fits_config, log_grid, make_trajectory
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text

from bachglass import figures, io, langevin, phases
from bachglass.figures_aging import examples
from bachglass.figures_layout import (
    CENSORED,
    INVERSE_TAU_LABEL,
    LOSS_LABEL,
    SMALL,
    STEPS_LABEL,
    TAU_LABEL,
    WIDTH_LABEL,
)
from bachglass.fits import OVER, fit_study
from bachglass.observables import RUN_DIMS, ObservablesConfig, combine_runs, run_observables

CONFIG = ObservablesConfig(eps=[0.3, 0.1, 0.03], smoothing_decades=0.1, tau_w=[10, 100], overlap_f=100)
FITS = fits_config(window_start=[100, 30], min_widths=2, extrapolation_eps=2, aging_tau_w_min=10, mu_max=2.0)
STEPS = log_grid(3000, 10)
NAMES = [
    "loss_curves",
    "power_laws",
    "learning_times",
    "inverse_learning_times",
    "critical_widths",
    "phase_diagram",
    "aging_msd",
    "aging_collapse",
    "sgd_floor",
    "two_time",
    "sharpness",
    "accuracy",
    "generalisation_phases",
    "langevin_tts",
    "stability",
    "sgd_floor_scaling",
]
FIT_DASHES = (0, (4, 2))
PHASES = phases.PhasesConfig(train_accuracy=0.9, heldout_fraction=0.9, grokking_gap=1000)


def synthetic_probes(traj, loss):
    """Accuracy rising as the loss falls (held-out: to a width-dependent ceiling); sharpness at some steps."""
    width = int(traj["width"].item())
    accuracy = 1.0 - (loss - loss.min()) / (loss.max() - loss.min() + 1e-9) * 0.8
    measured = np.isin(STEPS, STEPS[:: max(1, STEPS.size // 8)])
    values = {
        "accuracy": accuracy,
        "heldout_accuracy": accuracy * min(0.6, 0.02 * width),
        "sharpness": np.where(measured, 0.5 + np.log1p(STEPS) * width / 10, np.nan),
    }
    run = {d: traj[d].values for d in RUN_DIMS}
    return xr.Dataset(
        {
            name: xr.DataArray(v, {"time": traj["time"]}, "time").expand_dims(run)
            for name, v in values.items()
        },
    ).assign_coords(step=traj["step"])


def synthetic_study(
    depths=(1, 2), widths=(4, 8, 12, 16, 24), seeds=(0, 1), diverged=(), floor=0.01, scale=1.0
):
    """Critical slowing down with w_c = 14/d: 1/tau is linear in w - w_c above it; below, a plateau.

    Narrow nets sit 0.35 nats or more above the floor (censored at every eps, under-parametrized);
    wide ones fall as 3/(1 + (w - w_c) t/A) onto the floor.
    """
    runs = []
    for d in depths:
        for w in widths:
            for s in seeds:
                w_c = 14 / d
                plateau = 0.35 + 0.05 * (w_c - w) if w < w_c else 0.0
                rate = (w - w_c) / (50 * (1 + 0.1 * s)) if w > w_c else 0.05
                loss = floor + plateau + scale * 3.0 / (1.0 + rate * STEPS)
                status = "diverged" if (d, w, s) in diverged else "completed"
                traj = make_trajectory(
                    d, w, s, steps=STEPS, loss=loss, data_floor=floor, status=status, diverged_step=300
                )
                runs.append(run_observables(traj, CONFIG, {}, probes=synthetic_probes(traj, loss)))
    study = combine_runs(runs, {"params_sha256": "x"})
    study.attrs["checkpoints_per_decade"] = 10
    return study


def study_and_fits(**kwargs):
    logger = logging.getLogger("bachglass")
    level = logger.level
    logger.setLevel(logging.ERROR)  # tau_w snapped to the coarse test grid; restored for other tests
    try:
        study = synthetic_study(**kwargs)
    finally:
        logger.setLevel(level)
    fits = fit_study(study, FITS, CONFIG.smoothing_decades)
    return study, fits.merge(phases.generalisation_phases(study, PHASES), combine_attrs="override")


def synthetic_sweep(study):
    """A Langevin sweep of two temperatures made of one (depth, width) of the study."""
    one = study.isel(depth=[0], width=[-1])
    parts = []
    for t in (0.01, 0.1):
        part = one.copy()
        part["tau_e"] = part["tau_e"] / t
        parts.append(part.expand_dims(temperature=[t]))
    return xr.concat(parts, "temperature")


@pytest.fixture(scope="module")
def data():
    return study_and_fits(diverged={(2, 16, 1)})


def saved(fig, tmp_path, name):
    [path] = io.save_figure(fig, tmp_path / name, ["png"], dpi=60)
    assert path.exists() and path.stat().st_size > 1000
    return path


def titled(fig):
    return [ax for ax in fig.axes if ax.get_title()]


def legend_texts(fig):
    return [
        t.get_text()
        for legend in [*fig.legends, *(ax.get_legend() for ax in fig.axes)]
        if legend
        for t in legend.get_texts()
    ]


def test_figure_set_is_the_paper_figures_then_the_glass_ones():
    assert list(figures.FIGURES) == NAMES


def test_fixture_has_both_phases_and_critical_fits(data):
    _, fits = data
    assert set(np.unique(fits["phase"])) >= {0, 1}
    assert np.isfinite(fits["w_c"]).sum() >= 4 and np.isfinite(fits["w_c_star"]).all()
    assert np.isfinite(fits["t_star"]).any() and np.isfinite(fits["mu"]).all()


def test_loss_curves_draw_the_fitted_power_law_over_the_fit_window(data, tmp_path):
    study, fits = data
    fig = figures.loss_curves(study, fits)
    panels = titled(fig)
    assert [ax.get_title() for ax in panels] == ["d = 1", "d = 2"]
    assert all(ax.get_xscale() == "log" and ax.get_yscale() == "log" for ax in panels)
    assert panels[0].get_ylabel() == LOSS_LABEL and panels[1].get_xlabel() == STEPS_LABEL
    texts = legend_texts(fig)
    assert (
        "data floor 0.01" in texts and "diverged" in texts and any(t.startswith("fit L_inf") for t in texts)
    )
    assert [t.get_text() for t in fig.axes[-1].get_yticklabels()] == ["4", "8", "12", "16", "24"]
    fitted = [
        line for line in panels[0].lines if line.get_linestyle() == "--" and np.size(line.get_xdata()) > 2
    ]
    assert len(fitted) == 5  # one per width
    assert all(line.get_xdata().min() >= 100 for line in fitted)  # fits.window[0]
    saved(fig, tmp_path, "loss_curves")


def test_power_laws_show_alpha_and_log_L_inf_with_phases_and_floors(data, tmp_path):
    study, fits = data
    fig = figures.power_laws(study, fits)
    alpha, l_inf = titled(fig)
    assert alpha.get_ylabel() == r"power-law exponent $\alpha$" and l_inf.get_yscale() == "log"
    assert alpha.get_xlabel() == WIDTH_LABEL == l_inf.get_xlabel()
    texts = legend_texts(fig)
    assert {"d = 1", "d = 2", "data floor 0.01"} <= set(texts)
    assert any(t.startswith("under-parametrized") for t in texts)
    assert any(t.startswith("2 x floor_ref, d = 1") for t in texts)
    saved(fig, tmp_path, "power_laws")


def test_learning_times_draw_the_critical_fit_and_mark_censored_runs(data, tmp_path):
    study, fits = data
    fig = figures.learning_times(study, fits)
    panels = titled(fig)
    assert [ax.get_title() for ax in panels] == ["d = 1", "d = 2"]
    assert panels[0].get_yscale() == "log" and panels[0].get_ylabel() == TAU_LABEL
    assert panels[0].get_xlabel() == WIDTH_LABEL
    texts = legend_texts(fig)
    assert texts[:5] == ["ε = 0.3", "ε = 0.1", "ε = 0.03", CENSORED, "diverged"]
    open_triangles = [line for line in panels[0].lines if line.get_marker() == "^" and line.get_xdata().size]
    assert open_triangles and all(line.get_markerfacecolor() == "none" for line in open_triangles)
    w_c, A = (float(fits[v].sel(depth=1, eps=0.3)) for v in ("w_c", "A"))
    curves = [
        line for line in panels[0].lines if line.get_linestyle() == "-" and np.size(line.get_xdata()) > 10
    ]
    w, tau = curves[0].get_xdata(), curves[0].get_ydata()
    assert w.min() > w_c and tau == pytest.approx(A / (w - w_c))
    saved(fig, tmp_path, "learning_times")


def test_inverse_learning_times_are_straight_lines_through_w_c(data, tmp_path):
    study, fits = data
    fig = figures.inverse_learning_times(study, fits)
    panels = titled(fig)
    assert panels[0].get_yscale() == "linear" and panels[0].get_ylabel() == INVERSE_TAU_LABEL
    lines = [
        line for line in panels[1].lines if line.get_linestyle() == "-" and np.size(line.get_xdata()) > 10
    ]
    starts = sorted(float(line.get_xdata()[0]) for line in lines)
    assert starts == pytest.approx(
        sorted(fits["w_c"].sel(depth=2).values[np.isfinite(fits["w_c"].sel(depth=2))])
    )
    assert all(line.get_ydata()[0] == pytest.approx(0) for line in lines)
    assert any(t.startswith("w_c(ε) and its CI") for t in legend_texts(fig))
    saved(fig, tmp_path, "inverse_learning_times")


def test_critical_widths_extrapolate_to_w_c_star_at_zero_eps(data, tmp_path):
    study, fits = data
    fig = figures.critical_widths(study, fits)
    panels = titled(fig)
    star = float(fits["w_c_star"].sel(depth=1))
    assert panels[0].get_title().startswith(f"d = 1: w_c* = {star:.1f}")
    [line] = [line for line in panels[0].lines if line.get_linestyle() == "--"]
    assert line.get_xdata()[0] == 0 and line.get_ydata()[0] == pytest.approx(star)
    assert {"w_c(ε), CI", "w_c* (ε → 0), CI", "w_c* + b ε"} <= set(legend_texts(fig))
    saved(fig, tmp_path, "critical_widths")


def test_phase_diagram_marks_every_grid_point_and_the_boundary(data, tmp_path):
    study, fits = data
    fig = figures.phase_diagram(study, fits)
    [ax] = fig.axes
    points = sum(line.get_xdata().size for line in ax.lines if line.get_marker() in ("o", "s", "D"))
    assert points == fits.sizes["depth"] * fits.sizes["width"]
    [boundary] = [line for line in ax.lines if line.get_marker() == "None" and line.get_xdata().size == 2]
    np.testing.assert_allclose(boundary.get_xdata(), fits["w_c_star"].values)
    assert ax.get_xlabel() == WIDTH_LABEL and ax.get_ylabel().startswith("depth")
    saved(fig, tmp_path, "phase_diagram")


def test_aging_examples_are_the_widths_nearest_fractions_of_w_c_star(data):
    study, fits = data
    star = float(fits["w_c_star"].sel(depth=2))  # about 7
    assert [ex.width for ex in examples(study, fits)] == [
        min(study["width"].values, key=lambda w, r=r: abs(w - r * star)) for r in (0.6, 1.0, 2.0)
    ]


def test_aging_figures_show_three_examples_and_the_collapse_numbers(data, tmp_path):
    study, fits = data
    msd, collapse = figures.aging_msd(study, fits), figures.aging_collapse(study, fits)
    assert len(titled(msd)) == 3 and all(t.get_title().startswith("d = 2, w = ") for t in titled(msd))
    assert all(ax.get_xscale() == "log" == ax.get_yscale() for ax in msd.axes)
    assert "τ_w = 11" in legend_texts(msd)
    assert len(collapse.axes) == 6
    notes = [t.get_text() for ax in collapse.axes for t in ax.texts]
    assert (
        sum(n.startswith("S(τ/τ_w) = ") for n in notes) == 3 and sum(n.startswith("μ = ") for n in notes) == 3
    )
    assert collapse.axes[0].get_xlabel() == "τ/τ_w" and collapse.axes[3].get_xlabel().startswith("τ/τ_w^μ")
    saved(msd, tmp_path, "aging_msd")
    saved(collapse, tmp_path, "aging_collapse")


def test_sgd_floor_marks_t_star_on_each_over_parametrized_run(data, tmp_path):
    study, fits = data
    fig = figures.sgd_floor(study, fits)
    panels = titled(fig)
    over = fits["phase"] == OVER
    for ax, depth in zip(panels, fits["depth"].values, strict=True):
        stars = [line for line in ax.lines if line.get_marker() == "D"]
        assert len(stars) == int(
            np.isfinite(fits["t_star"].sel(depth=depth).where(over.sel(depth=depth))).sum()
        )
    assert panels[1].patches  # the shaded t > t* band
    assert "t > t*: aging collapse expected to fail" in legend_texts(fig)
    saved(fig, tmp_path, "sgd_floor")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"depths": (1,), "widths": (8,), "seeds": (0,), "floor": 0.0, "scale": 10.0},  # all censored, no fits
        {"depths": (2,), "widths": (6,), "seeds": (0,), "diverged": {(2, 6, 0)}},  # the only run diverged
    ],
    ids=["single-run-censored", "single-run-diverged"],
)
def test_every_figure_renders_a_degenerate_study(kwargs, tmp_path):
    study, fits = study_and_fits(**kwargs)
    assert np.isnan(fits["w_c"]).all()
    for name, fig in figures.draw_all(study, fits, langevin=synthetic_sweep(study)):
        saved(fig, tmp_path, name)
    assert CENSORED in legend_texts(figures.learning_times(study, fits))


def test_two_time_shows_q_alpha2_and_cosine_against_tau_over_tau_w(data, tmp_path):
    study, fits = data
    fig = figures.two_time(study, fits)
    saved(fig, tmp_path, "two_time")
    labels = {ax.get_ylabel() for ax in fig.axes}
    assert {"overlap Q(τ_w, τ_w + τ)", "non-Gaussian parameter α₂", "1 − C(τ_w, τ_w + τ)"} <= labels
    q = next(ax for ax in fig.axes if ax.get_ylabel().startswith("overlap"))
    assert len(q.get_lines()) == study.sizes["tau_w"]
    assert all(np.nanmax(line.get_ydata()) <= 1 for line in q.get_lines())


def test_sharpness_draws_each_width_and_the_stability_bound(data, tmp_path):
    study, fits = data
    study = study.assign_attrs(lr=0.25)
    fig = figures.sharpness(study, fits)
    saved(fig, tmp_path, "sharpness")
    assert "2/η = 8" in legend_texts(fig)
    panel = fig.axes[0]
    assert sum(line.get_linestyle() == "-" for line in panel.get_lines()) == study.sizes["width"]


def test_phase_map_colours_every_grid_point(data, tmp_path):
    study, fits = data
    fig = figures.generalisation_phases(study, fits)
    saved(fig, tmp_path, "generalisation_phases")
    [mesh] = fig.axes[0].collections
    phase = fits["generalisation_phase"].transpose("depth", "width").values
    codes = list(fits["generalisation_phase"].attrs["flag_values"])
    shown = np.asarray(mesh.get_array()).reshape(phase.shape)
    assert (shown == [[codes.index(p) for p in row] for row in phase]).all()
    assert len(np.unique(phase)) >= 2  # the synthetic study spans phases (narrow nets stay confused)
    meanings = fits["generalisation_phase"].attrs["flag_meanings"].split()
    assert legend_texts(fig) == [meanings[codes.index(p)] for p in sorted(np.unique(phase))]  # only these
    swatches = fig.axes[0].get_legend().legend_handles
    assert all(h.get_markeredgecolor() not in ("none", h.get_markerfacecolor()) for h in swatches)


def test_langevin_figure_rescales_time_by_tau_e(data, tmp_path):
    study, _ = data
    sweep = synthetic_sweep(study)
    fits = langevin.relaxation_fits(sweep)
    fig = figures.langevin_tts(sweep, fits)
    saved(fig, tmp_path, "langevin_tts")
    raw, scaled = fig.axes[0], fig.axes[1]
    assert scaled.get_xlabel() == "t / τ_e(T)"
    tau_w = int(sweep["tau_w"][0])
    for t, a, b in zip(sweep["temperature"].values, raw.get_lines(), scaled.get_lines(), strict=True):
        tau_e = sweep["tau_e"].sel(temperature=t, tau_w=tau_w).values.ravel()
        tau_e = np.exp(np.log(tau_e[np.isfinite(tau_e)]).mean())  # geometric mean over the seeds
        np.testing.assert_allclose(b.get_xdata(), a.get_xdata() / tau_e)
    slope = float(fits["langevin_tau_e_exponent"].sel(langevin_tau_w=tau_w))
    assert f"τ_w = {tau_w}: slope {slope:.2f}" in legend_texts(fig)  # read from fits.nc, not refitted
    assert "no Langevin sweep" in figures.langevin_tts(None).axes[0].texts[0].get_text()


# the clipped-GD variant's widths (configs/clipped_gd.yaml), the densest the project ships: 10-16 in
# steps of 1 crowd a log axis
DENSE_WIDTHS = (4, 6, 8, 10, 11, 12, 13, 14, 15, 16, 18, 20, 24, 32)


@pytest.fixture(scope="module")
def dense():
    return study_and_fits(widths=DENSE_WIDTHS, depths=(2, 3))


def test_every_figure_is_readable_on_a_slide(dense, tmp_path):
    """Text of SMALL (9) points or more at the saved size, tick labels that do not overlap, no empty axes."""
    study, fits = dense
    for name, fig in figures.draw_all(study, fits, langevin=synthetic_sweep(study)):
        FigureCanvasAgg(fig).draw()
        renderer = fig.canvas.get_renderer()
        texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
        assert [(t.get_text(), t.get_fontsize()) for t in texts if t.get_fontsize() < SMALL] == [], name
        for ax in fig.axes:
            empty = ax.get_visible() and not (ax.has_data() or ax.texts or ax.get_legend())
            assert not empty, (name, ax.get_title())
            for axis in (ax.xaxis, ax.yaxis):
                labels = [t for t in axis.get_ticklabels(which="both") if t.get_visible() and t.get_text()]
                boxes = [t.get_window_extent(renderer) for t in labels]
                clash = [
                    (a.get_text(), b.get_text())
                    for (a, box_a), (b, box_b) in itertools.combinations(zip(labels, boxes, strict=True), 2)
                    if box_a.overlaps(box_b)
                ]
                assert clash == [], (name, clash)
        saved(fig, tmp_path, name)


def test_the_langevin_title_names_the_net_without_brackets(data):
    study, _ = data
    sweep = synthetic_sweep(study)
    title = figures.langevin_tts(sweep, langevin.relaxation_fits(sweep))._suptitle.get_text()
    depth, width = int(sweep["depth"].item()), int(sweep["width"].item())
    assert f"(d = {depth}, w = {width})" in title and "[" not in title


def test_sgd_floor_colour_bar_names_only_the_widths_drawn(data):
    study, fits = data
    fig = figures.sgd_floor(study, fits)
    drawn = sorted({w for ax in titled(fig) for w in ax.get_title().split("w = ")[1].split(", ")}, key=int)
    bar = next(ax for ax in fig.axes if ax.get_label() == "<colorbar>")
    assert [t.get_text() for t in bar.get_yticklabels()] == drawn
