"""The figure set of docs/science.md §1.8, drawn from the study (``study.nc``) and its fits (``fits.nc``).

Each function ``draw(study, fits)`` returns a ``matplotlib.figure.Figure`` built without pyplot: no
global figure state, no GUI backend (the Agg canvas renders it), safe in parallel workflow jobs.
Saving is ``io.save_figure``'s job. The drawing lives in one module per subject: the loss
(:mod:`bachglass.figures_loss`), the transition (:mod:`bachglass.figures_transition`) and aging
(:mod:`bachglass.figures_aging`), and the observables beyond the paper (:mod:`bachglass.figures_glass`);
their shared labels and styles in :mod:`bachglass.figures_layout`.
"""

from collections.abc import Callable, Iterator

import xarray as xr
from matplotlib.figure import Figure

from bachglass.figures_aging import aging_collapse, aging_msd
from bachglass.figures_glass import accuracy, generalisation_phases, langevin_tts, sharpness, two_time
from bachglass.figures_loss import loss_curves, power_laws, sgd_floor
from bachglass.figures_sgd import sgd_floor_scaling, stability
from bachglass.figures_transition import (
    critical_widths,
    inverse_learning_times,
    learning_times,
    phase_diagram,
)
from bachglass.fits import aging_view

# The figure set drawn by the plot_figures rule, in docs/science.md §1.8 order, then those of the observables
# beyond the paper: file stem -> drawing function of (study, fits) (langevin_tts: of the sweep and
# fits; stability: of the stability scan).
FIGURES: dict[str, Callable[..., Figure]] = {
    "loss_curves": loss_curves,
    "power_laws": power_laws,
    "learning_times": learning_times,
    "inverse_learning_times": inverse_learning_times,
    "critical_widths": critical_widths,
    "phase_diagram": phase_diagram,
    "aging_msd": aging_msd,
    "aging_collapse": aging_collapse,
    "sgd_floor": sgd_floor,
    "two_time": two_time,
    "sharpness": sharpness,
    "accuracy": accuracy,
    "generalisation_phases": generalisation_phases,
    "langevin_tts": langevin_tts,
    "stability": stability,
    "sgd_floor_scaling": sgd_floor_scaling,
}
AGING_FIGURES = ("aging_msd", "aging_collapse", "two_time")


def draw_all(
    study: xr.Dataset,
    fits: xr.Dataset,
    aging: xr.Dataset | None = None,
    langevin: xr.Dataset | None = None,
    scan: xr.Dataset | None = None,
) -> Iterator[tuple[str, Figure]]:
    """Draw every figure of ``FIGURES``; the aging ones from the aging subset's longer runs if any."""
    view = aging_view(fits) if aging is not None else None
    for name, draw in FIGURES.items():
        if name == "langevin_tts":
            yield name, draw(langevin, fits)
        elif name == "stability":
            yield name, draw(scan)
        elif name in AGING_FIGURES and view is not None:
            yield name, draw(aging, view)
        else:
            yield name, draw(study, fits)
