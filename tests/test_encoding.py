import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from bachglass import chorales, io
from bachglass.encoding import (
    STEPS_PER_QUARTER,
    EncodingConfig,
    data_floor,
    decode,
    encode,
    sample_grid,
    transpose_shift,
)
from bachglass.errors import DataError, ParamsError

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def grid_chorale(cid, chords, key=(0, "major"), step_q=1.0):
    """A Chorale dict with one event per voice per chord, each ``step_q`` quarters long."""
    chords = np.asarray(chords)
    voices = [[[k * step_q, step_q, int(p)] for k, p in enumerate(chords[:, v])] for v in range(4)]
    return {
        "id": cid,
        "source": f"test/{cid}",
        "sha256": "0" * 64,
        "key": {"tonic_pc": key[0], "mode": key[1]},
        "length_quarters": len(chords) * step_q,
        "voices": voices,
    }


def config(**overrides):
    base = {
        "resolution": "quarter",
        "transpose": "none",
        "min_quarters": 0,
        "max_quarters": 1000,
        "order": "sorted",
        "order_seed": 0,
        "n_train": None,
        "n_heldout": 0,
    }
    return EncodingConfig(**(base | overrides))


C, F, G = [72, 67, 64, 48], [72, 69, 65, 53], [71, 67, 62, 55]


def test_config_has_exactly_the_keys_of_the_params_encoding_section():
    section = yaml.safe_load(PARAMS.read_text())["encoding"]
    assert EncodingConfig(**section).steps_per_quarter == 1


@pytest.mark.parametrize(("key", "bad"), [("resolution", "half"), ("order", "random")])
def test_bad_config_value_is_reported_with_its_key(key, bad):
    with pytest.raises(ParamsError, match=re.escape(f"encoding.{key}: ")):
        config(**{key: bad})


def test_data_floor_is_ln2_per_differing_voice_after_a_shared_first_chord():
    # Both chorales open with C; at step 1 one goes to F, the other to G (all 4 voices differ,
    # since F and G differ in every voice), then they are told apart by their prefixes.
    tokens = np.array([[C, F, C], [C, G, C]])
    floor = data_floor(tokens, np.array([3, 3]))
    assert floor == pytest.approx(4 * 2 * math.log(2) / 16)


def test_data_floor_counts_only_the_voices_that_differ():
    other = [73, 67, 64, 48]  # only the soprano differs from C
    tokens = np.array([[C, C, F], [C, other, F]])
    assert data_floor(tokens, np.array([3, 3])) == pytest.approx(2 * math.log(2) / 16)


def test_data_floor_conditions_on_the_whole_prefix_not_the_last_chord():
    # Same chord at step 1 but different openings: a prefix memoriser tells them apart.
    tokens = np.array([[C, G, F], [F, G, C]])
    assert data_floor(tokens, np.array([3, 3])) == 0.0


def test_data_floor_ignores_steps_beyond_a_chorales_length():
    # The short chorale ends (padding -1) where the long one goes on: no shared label at step 2.
    tokens = np.array([[C, F, [-1] * 4], [C, F, G]])
    assert data_floor(tokens, np.array([2, 3])) == 0.0
    assert math.isnan(data_floor(tokens[:, :1], np.array([1, 1])))


def brute_force_floor(tokens, lengths):
    total, labels = 0.0, 0
    for c in range(len(tokens)):
        for t in range(1, lengths[c]):
            same = [
                d
                for d in range(len(tokens))
                if lengths[d] > t and np.array_equal(tokens[d, :t], tokens[c, :t])
            ]
            for v in range(4):
                values, counts = np.unique(tokens[same, t, v], return_counts=True)
                p = counts[values == tokens[c, t, v]][0] / len(same)
                total -= math.log(p)
                labels += 1
    return total / labels


def test_data_floor_equals_brute_force_on_random_shared_openings():
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 2, size=(12, 6, 4))  # 2 tokens per voice: many shared prefixes
    lengths = rng.integers(2, 7, size=12)
    assert data_floor(tokens, lengths) == pytest.approx(brute_force_floor(tokens, lengths))


def test_grid_takes_the_sounding_pitch_at_each_grid_point():
    chorale = grid_chorale("x", [C, C])
    # soprano: eighths 72, 74, then 67 overlapped by a rest and a lower note (two voices in one
    # part): the highest sounding pitch wins, and any note wins over a rest
    chorale["voices"][0] = [[0, 0.5, 72], [0.5, 0.5, 74], [1, 1, 67], [1, 0.5, -1], [1.5, 0.5, 60]]
    assert sample_grid(chorale, 1)[:, 0].tolist() == [72, 67]
    assert sample_grid(chorale, 2)[:, 0].tolist() == [72, 74, 67, 67]


def test_grid_marks_silence_as_rest():
    chorale = grid_chorale("x", [C, C, C])
    chorale["voices"][3] = [[0, 1, 48]]  # the bass stops after one quarter
    assert sample_grid(chorale, 1)[:, 3].tolist() == [48, -1, -1]


@pytest.mark.parametrize(
    ("tonic", "mode", "shift"),
    [
        (0, "major", 0),
        (1, "major", -1),
        (6, "major", -6),
        (7, "major", 5),
        (9, "minor", 0),
        (4, "minor", 5),
        (2, "minor", -5),
        (3, "minor", -6),
    ],
)
def test_transposition_takes_the_smallest_shift_to_c_major_or_a_minor(tonic, mode, shift):
    assert transpose_shift({"tonic_pc": tonic, "mode": mode}) == shift


def test_transposed_encoding_moves_pitches_but_not_rests():
    chorale = grid_chorale("x", [C, [74, 69, 65, -1]], key=(2, "major"))
    ds = encode([chorale], config(transpose="c_major_a_minor"))
    assert ds["pitch"].values[0].tolist() == [[70, 65, 62, 46], [72, 67, 63, -1]]


def small_corpus():
    return [
        grid_chorale("b", [C, F, G, C]),
        grid_chorale("a", [C, G, C]),
        grid_chorale("c", [G, G, C, F, C]),
        grid_chorale("long", [C] * 20),
    ]


def test_encoded_layout_follows_the_contract():
    ds = encode(small_corpus(), config(max_quarters=6, n_train=2, n_heldout=1))
    assert dict(ds.sizes) == {"chorale": 3, "step": 5, "voice": 4, "token": 4}
    assert ds["chorale"].values.tolist() == ["a", "b", "c"]
    assert ds["split"].values.tolist() == ["train", "train", "heldout"]
    assert ds["length"].values.tolist() == [3, 4, 5]
    assert ds["voice"].values.tolist() == ["S", "A", "T", "B"]
    assert ds["tokens"].dtype == np.int16 and ds["pitch"].dtype == np.int16
    assert ds["mask"].dtype == np.int8
    assert ds["mask"].values.sum(axis=1).tolist() == [3, 4, 5]
    assert (ds["tokens"].values[0, 3:] == -1).all() and (ds["pitch"].values[0, 3:] == -2).all()
    # rest token first even though no voice rests; -2 beyond a voice's vocabulary
    assert ds["vocab"].sel(voice="S").values.tolist() == [-1, 71, 72, -2]
    assert ds["vocab"].sel(voice="B").values.tolist() == [-1, 48, 53, 55]
    assert ds["vocab_size"].values.tolist() == [3, 3, 4, 4]
    assert ds.attrs["scored_notes"] == (2 + 3) * 4
    assert ds.attrs["n_train"] == 2 and ds.attrs["n_heldout"] == 1
    assert ds.attrs["data_floor"] == pytest.approx(4 * 2 * math.log(2) / 20)


def test_selection_does_not_depend_on_input_order_and_shuffle_is_seeded():
    corpus = [grid_chorale(f"c{i:02d}", [C] * (2 + i % 3)) for i in range(20)]
    ids = encode(corpus, config())["chorale"].values.tolist()
    assert ids == sorted(ids)
    assert encode(corpus[::-1], config())["chorale"].values.tolist() == ids
    shuffled = encode(corpus, config(order="shuffled", order_seed=3))["chorale"].values.tolist()
    assert shuffled != ids and sorted(shuffled) == ids
    again = encode(corpus[::-1], config(order="shuffled", order_seed=3))["chorale"].values
    assert again.tolist() == shuffled


def test_too_few_chorales_names_the_keys_and_the_count():
    with pytest.raises(DataError, match=r"encoding\.n_train: .*only 3 of 4 last 0-6 quarters"):
        encode(small_corpus(), config(max_quarters=6, n_train=3, n_heldout=1))


def test_no_chorale_within_the_length_range_names_the_keys():
    with pytest.raises(
        DataError,
        match=re.escape(
            "encoding.min_quarters/encoding.max_quarters: none of the 4 chorales lasts 1-2 quarters;"
        ),
    ):
        encode(small_corpus(), config(min_quarters=1, max_quarters=2))


def bad_pitch_chorale(midi, key=(0, "major")):
    """Chorale bwv101.7 in eighths, its alto at quarter 12.5 replaced by ``midi``."""
    chorale = grid_chorale("bwv101.7", [C] * 32, key=key, step_q=0.5)
    chorale["voices"][1][25][2] = midi
    return chorale


@pytest.mark.parametrize(
    ("midi", "transpose", "key", "problem"),
    [
        (200, "none", (0, "major"), "pitch 200 is outside MIDI 0-127 (and not -1, a rest); fix or drop"),
        (128, "c_major_a_minor", (0, "major"), "pitch 128 is outside MIDI 0-127"),
        (-5, "none", (0, "major"), "pitch -5 is outside MIDI 0-127 (and not -1, a rest)"),
        (-2, "none", (0, "major"), "pitch -2 is outside MIDI 0-127"),  # would read as padding
        (125, "c_major_a_minor", (7, "major"), "pitch 130 (125 transposed by +5) is outside MIDI 0-127; "
         "drop the chorale or set encoding.transpose to none"),
        (3, "c_major_a_minor", (3, "minor"), "pitch -3 (3 transposed by -6) is outside MIDI 0-127"),
        (60.5, "none", (0, "major"), "pitch 60.5 is not an integer MIDI pitch; fix or drop the chorale"),
        ("60", "none", (0, "major"), "pitch '60' is not an integer MIDI pitch"),
        (None, "none", (0, "major"), "pitch None is not an integer MIDI pitch"),
        (True, "none", (0, "major"), "pitch True is not an integer MIDI pitch"),
    ],
)  # fmt: skip
def test_pitch_outside_midi_names_chorale_voice_quarter_and_pitch(midi, transpose, key, problem):
    chorale = bad_pitch_chorale(midi, key=key)
    where = "chorales.json: chorale bwv101.7, voice A at quarter 12.5: "
    with pytest.raises(DataError, match=re.escape(where + problem)):
        encode([chorale], config(transpose=transpose))


@pytest.mark.parametrize(
    ("midi", "transpose", "key", "encoded"),
    [
        (127, "none", (0, "major"), 127),
        (122, "c_major_a_minor", (7, "major"), 127),
        (6, "c_major_a_minor", (6, "major"), 0),
        (60.0, "none", (0, "major"), 60),
        (-1, "none", (0, "major"), -1),
    ],
)  # fmt: skip
def test_pitch_at_the_edge_of_midi_after_transposition_is_encoded(midi, transpose, key, encoded):
    ds = encode([bad_pitch_chorale(midi, key=key)], config(resolution="eighth", transpose=transpose))
    assert ds["pitch"].sel(voice="A").values[0, 25] == encoded


@pytest.mark.parametrize(
    ("event", "problem"),
    [
        ([12.5, 0.5], "event [12.5, 0.5] is not [onset, duration, midi]"),
        (["12.5", 0.5, 60], "event ['12.5', 0.5, 60] has a bad onset or duration"),
        ([12.5, float("nan"), 60], "event [12.5, nan, 60] has a bad onset or duration"),
    ],
)
def test_malformed_event_names_chorale_voice_and_event(event, problem):
    chorale = bad_pitch_chorale(60)
    chorale["voices"][1][25] = event
    with pytest.raises(DataError, match=re.escape(f"chorales.json: chorale bwv101.7, voice A: {problem}")):
        encode([chorale], config())


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda c: c.pop("id"), "chorale #0: no string 'id'"),
        (lambda c: c.pop("length_quarters"), "chorale bwv101.7: 'length_quarters' None is not a length"),
        (lambda c: c.update(key=None), "chorale bwv101.7: 'key' None is not {tonic_pc: 0-11, mode: ...}"),
        (lambda c: c["key"].update(tonic_pc="G"), "chorale bwv101.7: 'key' {'tonic_pc': 'G'"),
        (lambda c: c.pop("voices"), "chorale bwv101.7: 'voices' is not a list of event lists"),
        (
            lambda c: c["voices"][1][25].__setitem__(1, -0.5),
            "chorale bwv101.7, voice A: event [12.5, -0.5, 60] has a bad onset",
        ),
        (
            lambda c: c["voices"][1][25].__setitem__(0, True),
            "chorale bwv101.7, voice A: event [True, 0.5, 60] has a bad onset",
        ),
    ],
)
def test_malformed_chorale_is_a_data_error_naming_it(edit, problem):
    chorale = bad_pitch_chorale(60)
    edit(chorale)
    with pytest.raises(DataError, match=re.escape(f"chorales.json: {problem}")):
        encode([chorale], config(transpose="c_major_a_minor"))


def test_unknown_key_mode_is_a_data_error_only_when_transposing():
    chorale = bad_pitch_chorale(60, key=(0, "dorian"))
    with pytest.raises(DataError, match=re.escape("chorale bwv101.7: key mode 'dorian' is not one of major")):
        encode([chorale], config(transpose="c_major_a_minor"))
    encode([chorale], config())


def test_chorale_with_five_voices_names_it():
    chorale = grid_chorale("x", [C, F])
    chorale["voices"].append(chorale["voices"][0])
    with pytest.raises(
        DataError, match=re.escape("chorales.json: chorale x: 5 voices, expected 4 (S, A, T, B)")
    ):
        encode([chorale], config())


def test_empty_corpus_is_a_data_error():
    with pytest.raises(DataError, match="corpus is empty"):
        encode([], config())


def test_encoded_dataset_round_trips_through_netcdf(tmp_path):
    ds = encode(small_corpus(), config(n_heldout=1), provenance={"params_sha256": "abc"})
    io.write_netcdf(ds, tmp_path / "encoded.nc")
    back = io.read_netcdf(tmp_path / "encoded.nc")
    xr.testing.assert_identical(back, ds)


@st.composite
def satb_corpus(draw):
    """Chorale dicts as encode() reads them, and the pitch grid each must give at the encoding's resolution.

    Events lie on a data grid (quarter, eighth or sixteenth) that may be finer or coarser than the
    encoding's: each voice is runs of notes, rest events and gaps (no event: silent), plus a few
    events overlapping them (two voices in one part: the highest pitch sounds). The expected grid is
    built on the data grid, then read at every encoding grid point before the chorale's end.
    """
    data_q = STEPS_PER_QUARTER[draw(st.sampled_from(list(STEPS_PER_QUARTER)))]
    cfg = config(
        resolution=draw(st.sampled_from(list(STEPS_PER_QUARTER))),
        transpose=draw(st.sampled_from(["none", "c_major_a_minor"])),
    )
    # every transposition shift lies in -6..+5: keep the transposed pitches within MIDI 0-127
    pitch = st.integers(0, 127) if cfg.transpose == "none" else st.integers(6, 121)
    run = st.tuples(st.integers(1, 6), st.one_of(pitch, st.just(-1), st.none()))  # None: a gap
    corpus, expected = [], {}
    for c in range(draw(st.integers(1, 4))):
        voices, fine = [], {}
        for v in range(4):
            events, k = [], 0
            for length, midi in draw(st.lists(run, min_size=1, max_size=8)):
                if midi is not None:
                    events.append((k, length, midi))
                k += length
            overlaps = st.tuples(st.integers(0, k - 1), st.integers(1, 4), pitch)
            events += draw(st.lists(overlaps, max_size=2))
            voices.append([[start / data_q, length / data_q, midi] for start, length, midi in events])
            fine[v] = events
        end = max(start + length for events in fine.values() for start, length, _ in events)
        grid = np.full((end, 4), -1)
        for v, events in fine.items():
            for start, length, midi in events:
                np.maximum(grid[start : start + length, v], midi, out=grid[start : start + length, v])
        cid = f"c{c}"
        key = {"tonic_pc": draw(st.integers(0, 11)), "mode": draw(st.sampled_from(["major", "minor"]))}
        corpus.append(
            {"id": cid, "source": "fuzz", "sha256": "0" * 64, "key": key}
            | {"length_quarters": end / data_q, "voices": voices}
        )
        # encoding step j sits at j / q quarters, data step j * data_q / q; steps before the end only
        q = cfg.steps_per_quarter
        expected[cid] = grid[[j * data_q // q for j in range(-(-end * q // data_q))]]
    n_heldout = draw(st.integers(0, len(corpus) - 1))
    return corpus, dataclasses.replace(cfg, n_heldout=n_heldout), expected


@settings(max_examples=200, deadline=None)
@given(satb_corpus())
def test_encode_then_decode_returns_the_sampled_pitches_of_any_satb_corpus(case):
    corpus, cfg, expected = case
    for chorale in corpus:
        np.testing.assert_array_equal(sample_grid(chorale, cfg.steps_per_quarter), expected[chorale["id"]])
    if cfg.transpose == "c_major_a_minor":
        for chorale in corpus:
            grid, shift = expected[chorale["id"]], transpose_shift(chorale["key"])
            expected[chorale["id"]] = np.where(grid >= 0, grid + shift, grid)
    n_train = len(corpus) - cfg.n_heldout
    if all(len(expected[c["id"]]) < 2 for c in corpus[:n_train]):
        with pytest.raises(DataError, match="no training chorale spans two grid steps"):
            encode(corpus, cfg)
        return
    ds = encode(corpus[::-1], cfg)  # the order of arrival must not matter
    decoded = decode(ds)
    assert [d["id"] for d in decoded] == [c["id"] for c in corpus]  # ids c0, c1, ... are sorted
    assert [d["split"] for d in decoded] == ["train"] * n_train + ["heldout"] * cfg.n_heldout
    for d in decoded:
        np.testing.assert_array_equal(d["pitch"], expected[d["id"]])
    lengths = np.array([len(expected[c["id"]]) for c in corpus])
    np.testing.assert_array_equal(ds["length"].values, lengths)
    exists = np.arange(ds.sizes["step"])[None, :] < lengths[:, None]
    np.testing.assert_array_equal(ds["mask"].values, exists.astype(np.int8))
    tokens, pitch = ds["tokens"].values, ds["pitch"].values
    assert (tokens[~exists] == -1).all() and (pitch[~exists] == -2).all()
    for v in range(4):
        size, vocab = int(ds["vocab_size"].values[v]), ds["vocab"].values[v]
        used = np.unique(np.concatenate([expected[c["id"]][:, v] for c in corpus]))
        # sorted, rest first, exactly the pitches used in this voice, -2 beyond its size
        assert vocab[:size].tolist() == sorted({-1, *used.tolist()}) and vocab[0] == -1
        assert (vocab[size:] == -2).all()
        assert ((tokens[..., v][exists] >= 0) & (tokens[..., v][exists] < size)).all()
        np.testing.assert_array_equal(vocab[tokens[..., v][exists]], pitch[..., v][exists])


def test_default_params_select_the_feasibility_chorales_and_reproduce_their_floor():
    # the first 8 chorales of 40-56 quarters, floor 0.0037 nats/note on 1488 notes;
    # the 8 training + 8 held-out chorales all lie within the first 30 corpus files.
    kept, _ = chorales.load_music21_corpus("bach", max_scores=30)
    ds = encode(kept, EncodingConfig(**yaml.safe_load(PARAMS.read_text())["encoding"]))
    train = ds["chorale"].values[ds["split"].values == "train"].tolist()
    assert train == [
        "bwv101.7",
        "bwv102.7",
        "bwv103.6",
        "bwv104.6",
        "bwv108.6",
        "bwv110.7",
        "bwv112.5",
        "bwv113.8",
    ]
    assert ds["length"].values[:8].tolist() == [48, 48, 48, 40, 52, 44, 56, 44]
    assert ds.attrs["scored_notes"] == 1488
    assert ds.attrs["data_floor"] == pytest.approx(0.0037, abs=5e-5)
