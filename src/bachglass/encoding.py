"""SATB chorales to per-voice token sequences on a time grid, with vocabularies and the data floor.

The network sees, at each grid step, the four voices as one-hots over per-voice vocabularies and
predicts the next step's four tokens. The data floor is the loss that a perfect memoriser of the
training set still pays, because different chorales share openings (docs/science.md §1.3).
"""

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr
from scipy.special import xlogy

from bachglass.errors import DataError, ParamsError

VOICES = ("S", "A", "T", "B")
STEPS_PER_QUARTER = {"quarter": 1, "eighth": 2, "sixteenth": 4}
TRANSPOSES = ("none", "c_major_a_minor")
ORDERS = ("sorted", "shuffled")
TARGET_TONIC = {"major": 0, "minor": 9}  # C major, A minor
REST, PAD_TOKEN, PAD_PITCH = -1, -1, -2
# Event boundaries are floats (triplets give 1/3): a boundary within this of a grid point is on it.
GRID_TOLERANCE = 1e-6
HELDOUT_SPLITS = ("valid", "test")  # a JSB file's splits other than "train", in held-out order


@dataclass(frozen=True)
class EncodingConfig:
    """The ``encoding`` section of params.yaml (see its comments for the meaning of each key)."""

    resolution: str
    transpose: str
    min_quarters: float
    max_quarters: float
    order: str
    order_seed: int
    n_train: int | None
    n_heldout: int

    def __post_init__(self) -> None:
        """Reject values a library caller could pass around the schema."""
        for key, value, allowed in [
            ("resolution", self.resolution, tuple(STEPS_PER_QUARTER)),
            ("transpose", self.transpose, TRANSPOSES),
            ("order", self.order, ORDERS),
        ]:
            if value not in allowed:
                raise ParamsError(f"encoding.{key}: {value!r} is not one of {', '.join(allowed)}")
        if self.n_heldout < 0 or (self.n_train is not None and self.n_train < 1):
            raise ParamsError("encoding.n_train: must be >= 1 (or null), n_heldout >= 0")

    @property
    def steps_per_quarter(self) -> int:
        """Grid steps per quarter note."""
        return STEPS_PER_QUARTER[self.resolution]


def sample_grid(chorale: dict[str, Any], steps_per_quarter: int) -> np.ndarray:
    """Sounding MIDI pitch of each voice at each grid point: int array (step, voice), -1 = rest.

    Grid point k sits at k / steps_per_quarter quarters and takes the event with onset <= t < end;
    the grid holds every point before the chorale's end, so a chorale ending off the grid keeps its
    last, partly sounding step (as an event ending off the grid does). Where events of one voice
    overlap (two voices written in one part), the highest pitch wins, as for a chord; any note wins
    over a rest. Pitches are not checked here: ``encode`` rejects any that is not MIDI 0-127 or -1.
    """
    n_steps = math.ceil(chorale["length_quarters"] * steps_per_quarter - GRID_TOLERANCE)
    grid = np.full((n_steps, len(VOICES)), REST, dtype=np.int64)
    for v, events in enumerate(chorale["voices"]):
        for onset, duration, midi in events:
            lo = max(math.ceil(onset * steps_per_quarter - GRID_TOLERANCE), 0)
            hi = math.ceil((onset + duration) * steps_per_quarter - GRID_TOLERANCE)
            np.maximum(grid[lo:hi, v], int(midi), out=grid[lo:hi, v])  # 60.0 from JSON: 60
    return grid


def transpose_shift(key: dict[str, Any]) -> int:
    """Semitones (-6..+5) that move a major key's tonic to C and a minor key's to A."""
    return (TARGET_TONIC[key["mode"]] - key["tonic_pc"] + 6) % 12 - 6


def select(chorales: list[dict], config: EncodingConfig) -> tuple[list[dict], int]:
    """Chorales of allowed length in training order, and how many of them (the first) train.

    The order is by id, or a seeded permutation of that, so the selection never depends on the order
    in which the chorales arrive. Chorales of a file with its own splits (JSB: ``split`` train, valid,
    test) train only from its ``train`` split; the held-out ones come from the others, ``valid``
    first. Without splits the first ``n_train`` train and the next ``n_heldout`` are held out.
    """
    if not chorales:
        raise DataError("chorales: the corpus is empty; check the data section of params.yaml")
    ids = [c["id"] for c in chorales]
    if len(set(ids)) != len(ids):
        raise DataError("chorales: duplicate chorale ids; re-create chorales.json")
    lo, hi = config.min_quarters, config.max_quarters
    fit = sorted((c for c in chorales if lo <= c["length_quarters"] <= hi), key=lambda c: c["id"])
    if not fit:
        raise DataError(
            f"encoding.min_quarters/encoding.max_quarters: none of the {len(chorales)} chorales lasts "
            f"{lo}-{hi} quarters; widen encoding.min_quarters/encoding.max_quarters"
        )
    if config.order == "shuffled":
        fit = [fit[i] for i in np.random.default_rng(config.order_seed).permutation(len(fit))]
    if any("split" in c for c in fit):  # a file with its own splits: train on "train", hold out the rest
        pool = [c for c in fit if c.get("split") == "train"]
        others = sorted((c for c in fit if c.get("split") != "train"), key=_split_rank)  # stable
        if not pool:
            raise DataError(
                f"chorales: none of the {len(fit)} chorales of allowed length is from the file's 'train' "
                "split; add 'train' to data.url.splits"
            )
        n_train = len(pool) if config.n_train is None else config.n_train
        held = others
        found = f"{len(pool)} chorales of the file's 'train' split and {len(others)} of its other splits"
    else:
        pool = fit
        n_train = len(fit) - config.n_heldout if config.n_train is None else config.n_train
        held = fit[max(n_train, 0) :]
        found = str(len(fit))
    if n_train < 1 or n_train > len(pool) or config.n_heldout > len(held):
        raise DataError(
            f"encoding.n_train: {config.n_train} training + {config.n_heldout} held-out chorales "
            f"requested, but only {found} of {len(chorales)} last {lo}-{hi} quarters; lower "
            "encoding.n_train/encoding.n_heldout or widen encoding.min_quarters/encoding.max_quarters"
        )
    return pool[:n_train] + held[: config.n_heldout], n_train


def _split_rank(chorale: dict) -> int:
    """Held-out order of a file's splits: ``valid`` before ``test`` before any other."""
    return (
        HELDOUT_SPLITS.index(chorale["split"])
        if chorale.get("split") in HELDOUT_SPLITS
        else len(HELDOUT_SPLITS)
    )


def data_floor(tokens: np.ndarray, lengths: np.ndarray) -> float:
    """Loss (nats/note) of a perfect prefix memoriser of ``tokens`` with per-voice softmaxes.

    For every label (chorale c, step t >= 1, voice v) the best a model that has seen the whole prefix
    tokens[c, :t] can do is predict the empirical distribution of that voice's token over the
    chorales sharing the prefix; the floor is the mean entropy of that distribution. It is non-zero
    only where chorales share openings. ``tokens`` is (chorale, step, voice), ``lengths`` (chorale);
    steps at or beyond a chorale's length are ignored. NaN when there are no labels.

    Chorales with equal prefixes share a prefix id, relabelled step by step from (old id, chord),
    so the cost is one ``np.unique`` per step instead of comparing whole prefixes.
    """
    lengths = np.asarray(lengths)
    prefix = np.zeros(len(lengths), dtype=np.int64)
    entropy_sum, labels = 0.0, 0
    for t in range(int(lengths.max(initial=0))):
        active = np.flatnonzero(lengths > t)
        chord = tokens[active, t, :].astype(np.int64)
        if t >= 1:
            # sum over prefix groups p of n_p H_p = sum n_p ln n_p - sum n_{p,x} ln n_{p,x}
            _, n_p = np.unique(prefix[active], return_counts=True)
            for v in range(chord.shape[1]):
                pairs = np.stack([prefix[active], chord[:, v]], axis=1)
                _, n_px = np.unique(pairs, axis=0, return_counts=True)
                entropy_sum += xlogy(n_p, n_p).sum() - xlogy(n_px, n_px).sum()
            labels += chord.size
        rows = np.concatenate([prefix[active, None], chord], axis=1)
        prefix[active] = np.unique(rows, axis=0, return_inverse=True)[1].ravel()
    return entropy_sum / labels if labels else math.nan


def _pitch_problem(midi: Any, shift: int) -> str | None:
    """Return what is wrong with an event pitch transposed by ``shift`` and what to do; None if fine."""
    if isinstance(midi, bool) or not isinstance(midi, numbers.Real) or not float(midi).is_integer():
        return f"pitch {midi!r} is not an integer MIDI pitch; fix or drop the chorale"
    midi = int(midi)
    if midi == REST:
        return None
    if not 0 <= midi <= 127:
        return f"pitch {midi} is outside MIDI 0-127 (and not -1, a rest); fix or drop the chorale"
    if not 0 <= midi + shift <= 127:
        return (
            f"pitch {midi + shift} ({midi} transposed by {shift:+d}) is outside MIDI 0-127; "
            "drop the chorale or set encoding.transpose to none"
        )
    return None


def _is_number(x: Any) -> bool:
    """Tell whether ``x`` is a finite real number (a bool is not)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _check_chorale(chorale: Any, k: int, config: EncodingConfig) -> None:
    """Raise a ``DataError`` naming the chorale if it is not what get_chorales writes, or holds a bad pitch.

    The pitches are checked on the events, before sampling: on the grid a bad pitch would pass
    silently (-5 loses to a rest in ``sample_grid``'s maximum, -2 reads as padding, 200 becomes a
    token of its own). The message names chorale, voice and onset.
    """
    name = chorale.get("id") if isinstance(chorale, dict) else None
    where = f"chorales.json: chorale {name if isinstance(name, str) else f'#{k}'}"
    fix = "fix or drop the chorale, or re-create chorales.json"
    if not isinstance(name, str):
        raise DataError(f"{where}: no string 'id'; {fix}")
    if not _is_number(chorale.get("length_quarters")) or chorale["length_quarters"] < 0:
        raise DataError(
            f"{where}: 'length_quarters' {chorale.get('length_quarters')!r} is not a length; {fix}"
        )
    key = chorale.get("key")
    if (
        not isinstance(key, dict)
        or key.get("tonic_pc") not in range(12)
        or not isinstance(key.get("mode"), str)
    ):
        raise DataError(f"{where}: 'key' {key!r} is not {{tonic_pc: 0-11, mode: ...}}; {fix}")
    voices = chorale.get("voices")
    if not isinstance(voices, list) or not all(isinstance(v, list) for v in voices):
        raise DataError(f"{where}: 'voices' is not a list of event lists; {fix}")
    if len(voices) != len(VOICES):
        raise DataError(f"{where}: {len(voices)} voices, expected 4 (S, A, T, B); {fix}")
    shift = _shift(chorale, config)
    for voice, events in zip(VOICES, voices, strict=True):
        for event in events:
            if not isinstance(event, list | tuple) or len(event) != 3:
                raise DataError(f"{where}, voice {voice}: event {event!r} is not [onset, duration, midi]")
            onset, duration, midi = event
            if not (_is_number(onset) and _is_number(duration) and duration >= 0):
                raise DataError(f"{where}, voice {voice}: event {event!r} has a bad onset or duration")
            if problem := _pitch_problem(midi, shift):
                raise DataError(f"{where}, voice {voice} at quarter {onset:g}: {problem}")


def _shift(chorale: dict[str, Any], config: EncodingConfig) -> int:
    """Semitones by which the config transposes ``chorale`` (0 unless transposing)."""
    if config.transpose != "c_major_a_minor":
        return 0
    if chorale["key"]["mode"] not in TARGET_TONIC:
        mode, modes = chorale["key"]["mode"], ", ".join(TARGET_TONIC)
        raise DataError(
            f"chorales.json: chorale {chorale['id']}: key mode {mode!r} is not one of {modes}; "
            "set encoding.transpose to none or drop the chorale"
        )
    return transpose_shift(chorale["key"])


def _grids(chosen: list[dict], config: EncodingConfig) -> list[np.ndarray]:
    """Pitch grids (step, voice) of the chosen chorales, transposed if the config asks for it."""
    grids = []
    for chorale in chosen:
        shift = _shift(chorale, config)
        grid = sample_grid(chorale, config.steps_per_quarter)
        grids.append(np.where(grid >= 0, grid + shift, grid))
    return grids


def _variables(grids: list[np.ndarray]) -> dict[str, Any]:
    """Pad pitches, map them to tokens and build per-voice vocabularies (rest token at index 0)."""
    n_steps = max(len(g) for g in grids)
    pitch = np.full((len(grids), n_steps, len(VOICES)), PAD_PITCH, dtype=np.int16)
    for c, grid in enumerate(grids):
        pitch[c, : len(grid)] = grid
    vocabs = [np.union1d(np.concatenate([g[:, v] for g in grids]), [REST]) for v in range(4)]
    vocab = np.full((len(VOICES), max(map(len, vocabs))), PAD_PITCH, dtype=np.int16)
    tokens = np.full(pitch.shape, PAD_TOKEN, dtype=np.int16)
    for v, values in enumerate(vocabs):
        vocab[v, : len(values)] = values
        valid = pitch[:, :, v] != PAD_PITCH
        tokens[:, :, v][valid] = np.searchsorted(values, pitch[:, :, v][valid])
    sizes = np.array([len(values) for values in vocabs], dtype=np.int16)
    return {"pitch": pitch, "tokens": tokens, "vocab": vocab, "vocab_size": sizes}


def encode(
    chorales: list[dict], config: EncodingConfig, provenance: dict[str, str] | None = None
) -> xr.Dataset:
    """Encode chorales as the ``encoded.nc`` Dataset of the module contract.

    The training chorales come first along ``chorale``, then the held-out ones. Vocabularies cover
    both, so a held-out chorale never holds an unknown token; the data floor is computed on the
    training chorales only, since it is the floor of the training loss.
    """
    for k, chorale in enumerate(
        chorales
    ):  # every chorale, chosen or not: bad data is reported, never skipped
        _check_chorale(chorale, k, config)
    chosen, n_train = select(chorales, config)
    grids = _grids(chosen, config)
    lengths = np.array([len(g) for g in grids], dtype=np.int64)
    if (lengths[:n_train] < 2).all():
        raise DataError("encoding.min_quarters: no training chorale spans two grid steps; raise it")
    arrays = _variables(grids)
    n_steps = arrays["pitch"].shape[1]
    mask = (np.arange(n_steps)[None, :] < lengths[:, None]).astype(np.int8)
    scored = int(np.maximum(lengths[:n_train] - 1, 0).sum()) * len(VOICES)
    grid_dims = ("chorale", "step", "voice")
    ds = xr.Dataset(
        {
            "tokens": (grid_dims, arrays["tokens"], _attrs("vocabulary index, -1 on padding")),
            "mask": (("chorale", "step"), mask, _attrs("1 where the step exists")),
            "pitch": (grid_dims, arrays["pitch"], _attrs("MIDI pitch, -1 rest, -2 padding")),
            "vocab": (("voice", "token"), arrays["vocab"], _attrs("MIDI pitch of each token")),
            "vocab_size": ("voice", arrays["vocab_size"], _attrs("tokens in each voice")),
        },
        coords={
            "chorale": [c["id"] for c in chosen],
            "split": ("chorale", ["train"] * n_train + ["heldout"] * (len(chosen) - n_train)),
            "length": ("chorale", lengths, _attrs("grid steps of each chorale")),
            "step": np.arange(n_steps),
            "voice": list(VOICES),
            "token": np.arange(arrays["vocab"].shape[1]),
        },
    )
    ds.attrs = {
        "resolution": config.resolution,
        "steps_per_quarter": config.steps_per_quarter,
        "transpose": config.transpose,
        "n_train": n_train,
        "n_heldout": len(chosen) - n_train,
        "scored_notes": scored,
        "data_floor": float(data_floor(arrays["tokens"][:n_train], lengths[:n_train])),
        **(provenance or {}),
    }
    return ds


def _attrs(long_name: str) -> dict[str, str]:
    """CF attributes of a dimensionless variable."""
    return {"long_name": long_name, "units": "1"}


def decode(ds: xr.Dataset) -> list[dict[str, Any]]:
    """Per-chorale pitch arrays (step, voice) from the tokens and vocabularies of ``ds``.

    The inverse of the token mapping, for round-trip checks: returns dicts with ``id``, ``split`` and
    ``pitch`` (int array, -1 = rest), in the order of the ``chorale`` dimension.
    """
    tokens, vocab = ds["tokens"].values, ds["vocab"].values
    decoded = []
    for c, chorale_id in enumerate(ds["chorale"].values):
        n = int(ds["length"].values[c])
        pitch = np.stack([vocab[v, tokens[c, :n, v]] for v in range(len(VOICES))], axis=1)
        decoded.append({"id": str(chorale_id), "split": str(ds["split"].values[c]), "pitch": pitch})
    return decoded
