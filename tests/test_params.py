import copy
import re

import pytest
import yaml
from workflow_helpers import ROOT, TINY

from bachglass.errors import ParamsError
from bachglass.params import deep_merge, load_params, pack_seeds, seeds_of, validate_params

SCHEMA = ROOT / "workflow/schemas/params.schema.yaml"


@pytest.fixture
def params():
    return load_params(ROOT / "params.yaml")


def test_shipped_params_and_tiny_config_are_valid(params):
    validate_params(params, SCHEMA)
    validate_params(load_params(ROOT / "params.yaml", yaml.safe_load(TINY.read_text())), SCHEMA)


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_on_top_of_params_is_valid(path):
    validate_params(load_params(ROOT / "params.yaml", yaml.safe_load(path.read_text())), SCHEMA, str(path))


def test_every_schema_object_is_closed_and_requires_all_its_keys():
    def walk(node, where):
        if node.get("type") == "object":
            assert node.get("additionalProperties") is False, where
            assert set(node["required"]) == set(node["properties"]), where
            for key, sub in node["properties"].items():
                walk(sub, f"{where}.{key}")
        assert "default" not in node, f"{where}: defaults belong in params.yaml"

    walk(yaml.safe_load(SCHEMA.read_text()), "params")


@pytest.mark.parametrize(
    ("section", "key", "bad", "message"),
    [
        ("train", "lr", -0.1, "train.lr: -0.1 is less than or equal to the minimum of 0"),
        ("train", "device", "gpu", "train.device: 'gpu' is not one of"),
        ("train", "steps", 1.5, "train.steps: 1.5 is not of type 'integer'"),
        ("train", "cell", "transformer", "train.cell: 'transformer' is not one of"),
        (
            "train",
            "checkpoints_per_decade",
            19,
            "train.checkpoints_per_decade: 19 is less than the minimum of 20",
        ),
        ("grid", "width", [-4], "grid.width.0: -4 is less than the minimum of 1"),
        ("grid", "depth", [], "grid.depth: [] should be non-empty"),
        ("encoding", "resolution", "half", "encoding.resolution: 'half' is not one of"),
        ("data", "source", "ftp", "data.source: 'ftp' is not one of"),
        ("observables", "eps", [0.1, 0.3], "observables.eps: [0.1, 0.3] is not in decreasing order"),
        ("observables", "tau_w", [100, 10], "observables.tau_w: [100, 10] is not in increasing order"),
        ("aging", "tau_w", [300, 100], "aging.tau_w: [300, 100] must increase and stay below aging.steps"),
        ("aging", "steps", 0, "aging.steps: 0 is less than the minimum of 1"),
        ("langevin", "tau_w", [30000], "langevin.tau_w: [30000] must increase and stay below langevin.steps"),
        ("fits", "ci", 1.0, "fits.ci: 1.0 is greater than or equal to the maximum of 1"),
        ("fits", "floor_factor", 0.5, "fits.floor_factor: 0.5 is less than the minimum of 1"),
        ("fits", "max_width_ratio", 1, "fits.max_width_ratio: 1 is less than or equal to the minimum of 1"),
        ("fits", "min_widths", 1, "fits.min_widths: 1 is less than the minimum of 2"),
        ("fits", "n_boot", 5, "fits.n_boot: 5 is less than the minimum of 10"),
        ("fits", "window_start", [10**9], "fits.window_start: 1000000000 is not below train.steps"),
    ],
)
def test_bad_value_is_reported_with_its_key(params, section, key, bad, message):
    params[section][key] = bad
    with pytest.raises(ParamsError, match=re.escape(f"params.yaml: {message}")):
        validate_params(params, SCHEMA)


def test_an_integer_floor_lr_is_refused_since_it_names_files(params):
    params["sgd_floor"]["settings"][0]["lr"] = 1
    with pytest.raises(ParamsError, match=re.escape("params.yaml: sgd_floor.settings: write lr 1 as 1.0")):
        validate_params(params, SCHEMA)


def test_unknown_key_is_reported_with_its_section(params):
    params["train"]["devcie"] = "cpu"
    with pytest.raises(ParamsError, match=r"params.yaml: train: .*'devcie' was unexpected"):
        validate_params(params, SCHEMA)


def test_missing_key_is_reported(params):
    del params["observables"]["tau_w"]
    with pytest.raises(ParamsError, match=r"params.yaml: observables: 'tau_w' is a required property"):
        validate_params(params, SCHEMA)


def test_bad_checksum_format_is_rejected(params):
    params["data"]["url"]["sha256"] = "abc"
    with pytest.raises(ParamsError, match=r"data.url.sha256: 'abc' does not match"):
        validate_params(params, SCHEMA)


def test_waiting_times_must_leave_room_for_a_lag(params):
    params["observables"]["tau_w"] = [10, params["train"]["steps"]]
    with pytest.raises(ParamsError, match=r"observables.tau_w: .* is not below train.steps"):
        validate_params(params, SCHEMA)


def test_deep_merge_replaces_lists_and_merges_mappings():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 0}
    merged = deep_merge(base, {"a": {"c": [3]}})
    assert merged == {"a": {"b": 1, "c": [3]}, "d": 0}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 0}
    assert deep_merge(copy.deepcopy(base), {}) == base


def test_seed_packs_are_single_seeds_or_ranges():
    assert pack_seeds(5) == [5] and pack_seeds("0-2") == [0, 1, 2] and pack_seeds("3-4") == [3, 4]
    assert seeds_of([0, "1-3", 7]) == [0, 1, 2, 3, 7]
    for bad in ("2-2", "3-1", "0-2-4", "x"):
        with pytest.raises(ParamsError, match=re.escape(f"seed pack '{bad}'")):
            pack_seeds(bad)


@pytest.mark.parametrize(
    ("section", "packs", "message"),
    [
        ("grid", ["0-2", "2-3"], "grid.seed: seeds [2] are in more than one pack"),
        ("aging", [1, "0-1"], "aging.seed: seeds [1] are in more than one pack"),
        ("langevin", ["2-0"], "langevin.seed: seed pack '2-0': write one seed (5) or a range"),
        ("grid", ["0..2"], "grid.seed.0: '0..2' is not valid under any of the given schemas"),
    ],
)
def test_overlapping_or_malformed_seed_packs_are_reported_with_their_key(params, section, packs, message):
    params[section]["seed"] = packs
    with pytest.raises(ParamsError, match=re.escape(f"params.yaml: {message}")):
        validate_params(params, SCHEMA)
