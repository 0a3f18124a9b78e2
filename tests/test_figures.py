import numpy as np
import pytest
from conftest import checkpoint_steps, make_trajectory

from bachglass import figures, io
from bachglass.figures import CENSORED, LOSS_LABEL, STEPS_LABEL, TAU_LABEL, WIDTH_LABEL
from bachglass.observables import ObservablesConfig, combine_runs, run_observables

CONFIG = ObservablesConfig(eps=[0.3, 0.1, 0.03], smoothing_decades=0.1, tau_w=[10, 100])
STEPS = checkpoint_steps(3000, 10)


def synthetic_study(depths=(1, 2), widths=(4, 8, 16), seeds=(0, 1), diverged=(), floor=0.2, scale=1.0):
    """Narrow nets plateau above the floor (censored at small eps), wide ones approach it."""
    runs = []
    for d in depths:
        for w in widths:
            for s in seeds:
                plateau = max(0.0, 0.02 * (10 / d - w)) + 0.01 * s
                loss = floor + plateau + scale * 3.0 * (1.0 + STEPS / w) ** -0.8
                status = "diverged" if (d, w, s) in diverged else "completed"
                traj = make_trajectory(
                    d, w, s, steps=STEPS, loss=loss, data_floor=floor, status=status, diverged_step=300
                )
                runs.append(run_observables(traj, CONFIG, {}))
    return combine_runs(runs, {"params_sha256": "x"})


@pytest.fixture(scope="module")
def study():
    return synthetic_study(diverged={(2, 16, 1)})


def saved(fig, tmp_path, name):
    [path] = io.save_figure(fig, tmp_path / name, ["png"], dpi=60)
    assert path.exists() and path.stat().st_size > 1000
    return path


def test_loss_curves_has_one_log_log_panel_per_depth(study, tmp_path):
    fig = figures.loss_curves(study)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["d = 1", "d = 2"]
    assert all(ax.get_xscale() == "log" and ax.get_yscale() == "log" for ax in panels)
    assert panels[0].get_ylabel() == LOSS_LABEL and panels[1].get_xlabel() == STEPS_LABEL
    legend = [t.get_text() for t in panels[0].get_legend().get_texts()]
    assert legend == ["data floor 0.2", "diverged"]
    colorbar = fig.axes[-1]
    assert [t.get_text() for t in colorbar.get_yticklabels()] == ["4", "8", "16"]
    curves = [line.get_xdata() for line in panels[0].lines if np.size(line.get_xdata()) > 2]
    assert len(curves) == 3 * 3 and min(x.min() for x in curves) >= 1  # 2 seeds + median per width; no step 0
    saved(fig, tmp_path, "loss_curves")


def test_learning_times_marks_censored_runs(study, tmp_path):
    fig = figures.learning_times(study)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["d = 1", "d = 2"]
    assert panels[0].get_yscale() == "log" and panels[0].get_ylabel() == TAU_LABEL
    assert panels[0].get_xlabel() == WIDTH_LABEL
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert texts == ["ε = 0.3", "ε = 0.1", "ε = 0.03", CENSORED, "diverged"]
    open_triangles = [line for line in panels[0].lines if line.get_marker() == "^" and line.get_xdata().size]
    assert open_triangles and all(line.get_markerfacecolor() == "none" for line in open_triangles)
    assert np.isinf(study["tau"].sel(depth=1, width=4)).any()
    saved(fig, tmp_path, "learning_times")


def test_figures_render_a_single_depth_single_seed_all_censored_study(tmp_path):
    study = synthetic_study(depths=(1,), widths=(8,), seeds=(0,), floor=0.0, scale=10.0)
    assert np.isinf(study["tau"]).all()
    loss, tau = figures.loss_curves(study), figures.learning_times(study)
    assert [ax.get_title() for ax in tau.axes if ax.get_title()] == ["d = 1"]
    assert CENSORED in [t.get_text() for t in tau.legends[0].get_texts()]
    saved(loss, tmp_path, "loss_curves")
    saved(tau, tmp_path, "learning_times")


def test_figures_render_a_study_whose_only_run_diverged(tmp_path):
    study = synthetic_study(depths=(2,), widths=(6,), seeds=(0,), diverged={(2, 6, 0)})
    assert study["diverged"].all()
    saved(figures.loss_curves(study), tmp_path, "loss_curves")
    saved(figures.learning_times(study), tmp_path, "learning_times")
