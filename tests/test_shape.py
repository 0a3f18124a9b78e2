"""The code's shape: modules of one job and a bounded size, no import cycle, each list in one place."""

import dataclasses
import re

import pytest
import yaml
from workflow_helpers import ROOT

from bachglass import (
    encoding,
    figures,
    fits_config,
    io,
    observables,
    phases,
    probes,
    sgd,
    sgd_floor,
    stability,
)

PACKAGE = ROOT / "src/bachglass"
MAX_LINES = 400


def test_no_module_is_longer_than_400_lines():
    long = {p.name: n for p in PACKAGE.glob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_no_import_cycle_even_for_type_checkers_or_inside_functions():
    graph = {p.stem: io.bachglass_imports(p, type_checking=True) - {p.stem} for p in PACKAGE.glob("*.py")}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            pytest.fail(f"import cycle: {' -> '.join([*path[path.index(module) :], module])}")
        if module not in done:
            for imported in sorted(graph[module]):
                visit(imported, [*path, module])
            done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_code_modules_follow_every_import_but_the_type_checkers():
    assert io.code_modules(ROOT / "workflow/scripts/publish_data.py") == ["errors"]
    train = io.code_modules(PACKAGE / "train.py")
    assert {"train", "pack_state", "sgd", "ensemble", "model", "resume", "trajectory", "io"} <= set(train)
    for module in ("critical.py", "loss_fits.py"):  # FitsConfig: imported for type checkers only
        assert "fits_config" not in io.code_modules(PACKAGE / module), module


def test_only_the_body_of_if_type_checking_is_left_out(tmp_path):
    script = tmp_path / "step.py"
    script.write_text(
        "import typing\n"
        "if typing.TYPE_CHECKING:\n    from bachglass import fits\nelse:\n    from bachglass import sgd\n"
        "if not TYPE_CHECKING:\n    from bachglass import train\n"
        "def main():\n    import bachglass.phases\n"
    )
    assert io.bachglass_imports(script) == {"sgd", "train", "phases"}
    assert io.bachglass_imports(script, type_checking=True) == {"fits", "sgd", "train", "phases"}


@pytest.mark.parametrize(
    ("section", "config"),
    [
        ("encoding", encoding.EncodingConfig),
        ("train", sgd.TrainConfig),
        ("observables", observables.ObservablesConfig),
        ("probes", probes.ProbesConfig),
        ("phases", phases.PhasesConfig),
        ("fits", fits_config.FitsConfig),
        ("sgd_floor", sgd_floor.FloorConfig),
        ("stability", stability.ScanConfig),
    ],
)
def test_each_params_section_is_read_into_a_dataclass_of_its_keys_without_defaults(section, config):
    """params.yaml holds every default; the dataclasses only name the keys."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    fields = dataclasses.fields(config)
    assert {f.name for f in fields} == set(params[section])
    assert all(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING for f in fields)


def test_every_list_of_the_figures_is_the_figures_module():
    names = list(figures.FIGURES)
    common = (ROOT / "workflow/rules/common.smk").read_text()
    listed = re.search(r"FIGURE_NAMES = \[(.*?)\]", common, re.S).group(1)
    assert re.findall(r'"(\w+)"', listed) == names
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    assert plots == [f"results/figures/{name}.png" for name in names]
    captions = {p.stem for p in (ROOT / "workflow/report").glob("*.rst")} - {"workflow", "science_checks"}
    assert captions == set(names)
    results_doc = (ROOT / "docs/results.md").read_text()
    assert [name for name in names if f"`{name}" not in results_doc] == []


def test_figure_code_draws_fitted_numbers_and_fits_nothing():
    """Fitted quantities live in fits.nc: no figure module fits, or imports a module that does."""
    fitting = re.compile(r"\b(polyfit|curve_fit|lstsq|linregress|least_squares|minimize|power_law)\b")
    drawing = {p.stem for p in PACKAGE.glob("figures*.py")}
    for path in PACKAGE.glob("figures*.py"):
        assert not fitting.search(path.read_text()), path.name
        assert io.bachglass_imports(path) <= drawing | {"fits", "observables"}, path.name  # (their constants)


def test_a_name_is_labelled_in_one_place():
    """Long names and units: bachglass.labels for what several files hold, each module for its own."""
    from bachglass import aging, critical, fits, labels, langevin

    own = {
        "observables": observables.ATTRS,
        "probes": probes.VARIABLES,
        "stability": {k: (v[1], v[2]) for k, v in stability.VARIABLES.items() if v[1] is not None},
        "fits": fits.ATTRS,
        "phases": phases.ATTRS,
        "aging": aging.AGING_VARS,
        "critical": critical.CRITICAL_VARS,
        "langevin": langevin.FIT_ATTRS,
    }
    where: dict[str, str] = {}
    for module, table in own.items():
        for name, label in table.items():
            if name in labels.LABELS:  # only as a reference to the shared label
                assert label is labels.LABELS[name], f"{module} labels {name} again (bachglass.labels has it)"
                continue
            assert name not in where, f"{name} is labelled in {where.get(name)} and {module}"
            where[name] = module
