"""Validate the study parameters against the JSON schema, plus cross-key rules a schema cannot state.

Also the one reading of a seed pack (:func:`pack_seeds`): the runs one training job trains together.
"""

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from bachglass.errors import ParamsError


def _where(path: Any) -> str:
    return ".".join(str(p) for p in path)


def validate_params(config: Mapping[str, Any], schema: str | Path, source: str = "params.yaml") -> None:
    """Raise ``ParamsError`` naming ``source`` and the offending key when ``config`` is invalid.

    All schema errors are collected and the first (in key order) is reported, so that the message is
    stable from run to run.
    """
    with open(schema) as fh:
        schema_doc = yaml.safe_load(fh)
    validator = jsonschema.Draft202012Validator(schema_doc)
    errors = sorted(validator.iter_errors(dict(config)), key=lambda e: [str(p) for p in e.path])
    if errors:
        err = errors[0]
        where = _where(err.path)
        raise ParamsError(f"{source}: {where + ': ' if where else ''}{err.message}")
    _check_cross_keys(config, source)


PACKED = ("grid", "aging", "langevin")  # the sections whose seed lists are lists of seed packs
_RANGE = re.compile(r"(\d+)-(\d+)")


def pack_seeds(pack: int | str) -> list[int]:
    """Return the seeds of a seed pack as params.yaml writes it: ``5`` is seed 5, ``"0-2"`` 0, 1, 2.

    A pack's seeds train as one batched model in one job, and its files are named by the pack as
    written (``results/runs/d2_w8_s0-2/``), which is also how DVC's matrix names its stages.
    """
    text = str(pack)
    if text.isdigit():
        return [int(text)]
    match = _RANGE.fullmatch(text)
    if match is None or int(match[1]) >= int(match[2]):
        raise ParamsError(f"seed pack {pack!r}: write one seed (5) or a range of seeds low-high (0-2)")
    return list(range(int(match[1]), int(match[2]) + 1))


def seeds_of(packs: Iterable[int | str]) -> list[int]:
    """Return every seed of a list of seed packs, in order."""
    return [seed for pack in packs for seed in pack_seeds(pack)]


def _check_packs(config: Mapping[str, Any], source: str) -> None:
    for section in PACKED:
        try:
            seeds = seeds_of(config[section]["seed"])
        except ParamsError as err:
            raise ParamsError(f"{source}: {section}.seed: {err}") from None
        twice = sorted({s for s in seeds if seeds.count(s) > 1})
        if twice:
            raise ParamsError(f"{source}: {section}.seed: seeds {twice} are in more than one pack")


def _check_cross_keys(config: Mapping[str, Any], source: str) -> None:
    _check_packs(config, source)
    enc, obs = config["encoding"], config["observables"]
    if enc["min_quarters"] > enc["max_quarters"]:
        raise ParamsError(
            f"{source}: encoding.min_quarters ({enc['min_quarters']}) exceeds "
            f"encoding.max_quarters ({enc['max_quarters']})"
        )
    if list(obs["eps"]) != sorted(obs["eps"], reverse=True):
        raise ParamsError(f"{source}: observables.eps: {obs['eps']} is not in decreasing order")
    if list(obs["tau_w"]) != sorted(obs["tau_w"]):
        raise ParamsError(f"{source}: observables.tau_w: {obs['tau_w']} is not in increasing order")
    if max(obs["tau_w"]) >= config["train"]["steps"]:
        raise ParamsError(
            f"{source}: observables.tau_w: {max(obs['tau_w'])} is not below train.steps "
            f"({config['train']['steps']}); waiting times must leave room for a lag"
        )
    if config["data"]["source"] == "files" and not config["data"]["files"]["paths"]:
        raise ParamsError(f"{source}: data.files.paths: empty, but data.source is 'files'")
    _check_aging_and_fits(config, source)
    _check_floor_names(config, source)


def _check_floor_names(config: Mapping[str, Any], source: str) -> None:
    """Refuse an integer floor lr: the files say lr1.0_B4 (a float), DVC's stages the number as written."""
    for setting in config["sgd_floor"]["settings"]:
        if not isinstance(setting["lr"], float):
            raise ParamsError(
                f"{source}: sgd_floor.settings: write lr {setting['lr']} as {float(setting['lr'])}"
            )


def _check_aging_and_fits(config: Mapping[str, Any], source: str) -> None:
    fits, steps = config["fits"], config["train"]["steps"]
    for section in ("aging", "langevin"):
        tau_w, own = config[section]["tau_w"], config[section]["steps"]
        if list(tau_w) != sorted(tau_w) or max(tau_w) >= own:
            raise ParamsError(
                f"{source}: {section}.tau_w: {tau_w} must increase and stay below {section}.steps ({own})"
            )
    if max(fits["window_start"]) >= steps:
        raise ParamsError(
            f"{source}: fits.window_start: {max(fits['window_start'])} is not below train.steps ({steps}); "
            "a power-law window needs points"
        )


def load_params(path: str | Path, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read a params file, deep-merge ``overrides`` into it (as Snakemake's --configfile does)."""
    with open(path) as fh:
        config = yaml.safe_load(fh)
    if overrides:
        config = deep_merge(config, overrides)
    return config


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``update`` into a copy of ``base``, recursing into mappings; lists are replaced."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out
