import copy
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from music21 import common, converter

from bachglass import chorales
from bachglass.encoding import EncodingConfig, encode
from bachglass.errors import DataError

CORPUS = Path(common.getCorpusFilePath())
C, F, G = [72, 67, 64, 48], [72, 69, 65, 53], [71, 67, 62, 55]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- music21 corpus and the user's own scores ---


def test_first_twelve_corpus_files_keep_the_satb_chorales_and_explain_the_skips():
    kept, skipped = chorales.load_music21_corpus("bach", max_scores=12)
    by_id = {c["id"]: c for c in kept}
    assert len(kept) + len(skipped) == 12
    bwv101 = by_id["bwv101.7"]
    assert bwv101["source"] == "bach/bwv101.7.mxl"
    assert bwv101["sha256"] == sha((CORPUS / "bach/bwv101.7.mxl").read_bytes())
    assert bwv101["key"] == {"tonic_pc": 2, "mode": "minor"}  # "Vater unser", D minor
    assert bwv101["length_quarters"] == 48.0
    assert len(bwv101["voices"]) == 4
    first_pitches = [voice[0][2] for voice in bwv101["voices"]]
    assert first_pitches == sorted(first_pitches, reverse=True)
    reasons = {s["id"]: s["reason"] for s in skipped}
    assert reasons["bwv1.6"] == "5 parts (expected 4: S, A, T, B)"
    assert reasons["bwv112.5-sc"] == "7 parts (expected 4: S, A, T, B)"
    assert "bwv112.5" in by_id  # the 4-part variant of the same chorale is kept


def test_manifest_has_a_row_per_file_sorted_by_id():
    kept, skipped = chorales.load_music21_corpus("bach", max_scores=4)
    rows = chorales.manifest_rows(kept, skipped)
    assert [list(r) for r in rows] == [list(chorales.MANIFEST_COLUMNS)] * 4
    assert [r["id"] for r in rows] == ["bwv1.6", "bwv10.7", "bwv101.7", "bwv102.7"]
    assert rows[0] | {"sha256": ""} == {
        "id": "bwv1.6",
        "source": "bach/bwv1.6.mxl",
        "sha256": "",
        "parts": "5",
        "status": "skipped",
        "reason": "5 parts (expected 4: S, A, T, B)",
    }
    assert rows[2]["status"] == "kept" and rows[2]["reason"] == "" and rows[2]["parts"] == "4"


def test_analyses_and_second_formats_of_a_chorale_are_skipped_with_their_reason(monkeypatch):
    files = ["bach/choraleAnalyses/riemenschneider001.rntxt", "bach/bwv281.krn", "bach/bwv281.mxl"]
    monkeypatch.setattr(chorales.corpus, "getComposer", lambda _: [CORPUS / f for f in files])
    kept, skipped = chorales.load_music21_corpus("bach", max_scores=None)
    assert [(c["id"], c["source"]) for c in kept] == [("bwv281", "bach/bwv281.mxl")]
    assert sorted((s["id"], s["reason"]) for s in skipped) == [
        ("bwv281-krn", "duplicate of bach/bwv281.mxl (the same chorale in another format)"),
        ("riemenschneider001", "not a score (rntxt)"),
    ]


def test_a_file_that_is_not_a_single_score_is_skipped(monkeypatch):
    from music21 import stream

    monkeypatch.setattr(chorales.corpus, "getComposer", lambda _: [CORPUS / "bach/bwv101.7.mxl"])
    monkeypatch.setattr(chorales.converter, "parse", lambda path: stream.Opus())
    kept, skipped = chorales.load_music21_corpus("bach", max_scores=None)
    assert kept == [] and skipped[0]["reason"] == "not a single score (Opus)"


def test_corpus_file_music21_cannot_parse_is_skipped_with_its_message(monkeypatch):
    monkeypatch.setattr(chorales.corpus, "getComposer", lambda _: [CORPUS / "bach/bwv101.7.mxl"])

    def broken(path):
        raise ValueError("bad\nmeasure")

    monkeypatch.setattr(chorales.converter, "parse", broken)
    kept, skipped = chorales.load_music21_corpus("bach", max_scores=None)
    assert kept == []
    assert skipped[0]["reason"] == "music21 could not parse it: bad measure"


def test_own_score_files_are_loaded_in_sorted_order(tmp_path):
    for name in ("bwv102.7.mxl", "bwv101.7.mxl"):
        shutil.copy(CORPUS / "bach" / name, tmp_path / name)
    loaded = chorales.load_score_files([str(tmp_path / "*.mxl")])
    assert [c["id"] for c in loaded] == ["bwv101.7", "bwv102.7"]
    assert loaded[0]["source"] == str(tmp_path / "bwv101.7.mxl")


def test_pattern_matching_nothing_names_the_pattern(tmp_path):
    pattern = str(tmp_path / "*.krn")
    with pytest.raises(DataError, match=re.escape(f"{pattern}: matches no file")):
        chorales.load_score_files([pattern])


def test_unparsable_own_score_names_the_file(tmp_path):
    bad = tmp_path / "broken.musicxml"
    bad.write_text("<score-partwise><part id='P1'><measure><note>")
    with pytest.raises(DataError, match=re.escape(f"{bad}: music21 cannot parse this score")):
        chorales.load_score_files([str(bad)])


def edited_score(tmp_path, edit):
    score = converter.parse(CORPUS / "bach/bwv101.7.mxl")
    edit(score)
    return Path(score.write("musicxml", fp=tmp_path / "edited.musicxml"))


def test_own_score_with_three_parts_names_the_file(tmp_path):
    path = edited_score(tmp_path, lambda s: s.remove(s.parts[1]))
    with pytest.raises(DataError, match=re.escape(f"{path}: 3 parts, expected 4 (S, A, T, B)")):
        chorales.load_score_files([str(path)])


def test_own_score_with_five_parts_names_the_file(tmp_path):
    def double_the_alto(score):
        alto = copy.deepcopy(score.parts[1])
        alto.id = "alto-copy"
        score.insert(0, alto)

    path = edited_score(tmp_path, double_the_alto)
    assert len(converter.parse(path).parts) == 5
    with pytest.raises(DataError, match=re.escape(f"{path}: 5 parts, expected 4 (S, A, T, B)")):
        chorales.load_score_files([str(path)])


def test_own_score_with_parts_out_of_order_names_the_file(tmp_path):
    def swap(score):
        soprano = score.parts[0]
        score.remove(soprano)
        score.insert(0, soprano)  # appended after the bass

    path = edited_score(tmp_path, swap)
    with pytest.raises(DataError, match=re.escape(f"{path}: parts not in S > A > T > B order")):
        chorales.load_score_files([str(path)])


# --- the JSB-Chorales file: download, checksum, parsing ---


def jsb_fixture():
    """Three fake chorales on a sixteenth grid (each chord held 4 steps), in C major."""
    return {
        "train": [[C] * 4 + [F] * 4 + [G] * 4 + [C] * 4, [C] * 8 + [G] * 4 + [[72, 67, 64, -1]] * 4],
        "valid": [[G] * 4 + [C] * 4],
        "test": [],
    }


def test_download_checks_the_checksum_and_parses_the_file(server, tmp_path):
    body = json.dumps(jsb_fixture()).encode()
    server.files["/jsb.json"] = body
    url = f"{server.base}/jsb.json"
    path = chorales.download(url, sha(body), tmp_path / "data" / "jsb.json")
    assert path.read_bytes() == body
    parsed = chorales.parse_jsb(path, ["train", "valid"], steps_per_quarter=4, source_url=url)
    assert [c["id"] for c in parsed] == ["train000", "train001", "valid000"]
    first = parsed[0]
    assert first["source"] == f"{url}#train/0" and first["sha256"] == sha(body)
    assert first["length_quarters"] == 4.0
    assert first["voices"][0] == [[0.0, 2.0, 72], [2.0, 1.0, 71], [3.0, 1.0, 72]]
    assert first["key"] == {"tonic_pc": 0, "mode": "major"}
    assert parsed[1]["voices"][3][-1] == [3.0, 1.0, -1]
    # the quarter grid samples every 4th sixteenth step
    cfg = EncodingConfig("quarter", "none", 0, 100, "sorted", 0, None, 0)
    ds = encode(parsed, cfg)
    np.testing.assert_array_equal(ds["pitch"].values[0], np.asarray(jsb_fixture()["train"][0][::4]))


def test_existing_file_with_the_right_checksum_is_not_downloaded_again(server, tmp_path):
    body = b'{"train": []}'
    dest = tmp_path / "jsb.json"
    dest.write_bytes(body)
    assert chorales.download(f"{server.base}/jsb.json", sha(body), dest) == dest
    assert server.hits == []


def test_checksum_mismatch_names_url_and_key_and_keeps_the_file_there_before(server, tmp_path):
    server.files["/jsb.json"] = b'{"train": []}'
    url, dest = f"{server.base}/jsb.json", tmp_path / "jsb.json"
    dest.write_bytes(b"downloaded before")
    with pytest.raises(DataError, match=re.escape(f"{url}: sha256 ") + ".*data.url.sha256 f00"):
        chorales.download(url, "f00", dest)
    assert list(tmp_path.iterdir()) == [dest]  # no temporary file left
    assert dest.read_bytes() == b"downloaded before"  # the mismatching body never replaced it


def test_truncated_download_is_a_data_error_naming_the_url(server, tmp_path):
    body = json.dumps(jsb_fixture()).encode()
    server.files["/jsb.json"] = body
    server.truncate.add("/jsb.json")
    url = f"{server.base}/jsb.json"
    cut = f"{url}: download cut short ({len(body) // 2} of {len(body)} bytes); try again"
    with pytest.raises(DataError, match=re.escape(cut)):  # not "update the checksum"
        chorales.download(url, sha(body), tmp_path / "jsb.json")
    assert list(tmp_path.iterdir()) == []


def test_http_error_names_the_url(server, tmp_path):
    url = f"{server.base}/missing.json"
    with pytest.raises(DataError, match=re.escape(f"{url}: download failed (HTTP Error 404")):
        chorales.download(url, "0" * 64, tmp_path / "jsb.json")


def test_non_json_download_is_a_data_error_naming_the_file(server, tmp_path):
    body = b"<html>rate limited</html>"
    server.files["/jsb.json"] = body
    path = chorales.download(f"{server.base}/jsb.json", sha(body), tmp_path / "jsb.json")
    with pytest.raises(DataError, match=re.escape(f"{path}: not a JSB-Chorales JSON or NPZ file")):
        chorales.parse_jsb(path, ["train"], 4, "url")


def write_jsb(tmp_path, data):
    path = tmp_path / "jsb.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ([60, 55, 48], "is not 4 pitches"),
        ([60, "G4", 52, 48], "non-numeric pitch"),
        ([60, 55, 52, 200], "is not MIDI pitches"),
        (60, "is not 4 pitches"),
    ],
)
def test_malformed_step_names_file_split_chorale_and_step(tmp_path, step, message):
    data = jsb_fixture()
    data["valid"].append([C, C, step, C])
    path = write_jsb(tmp_path, data)
    where = f"{path}: chorale valid[1], step 2: "
    with pytest.raises(DataError, match=re.escape(where) + ".*" + message):
        chorales.parse_jsb(path, ["train", "valid"], 4, "url")


def test_missing_split_names_it_and_the_splits_present(tmp_path):
    path = write_jsb(tmp_path, {"train": [[C, F]], "valid": []})
    with pytest.raises(DataError, match=re.escape(f"{path}: no split 'test' (the file has: train, valid)")):
        chorales.parse_jsb(path, ["train", "test"], 4, "url")


def test_npz_variant_with_nan_for_silence_parses_like_the_json(tmp_path):
    data = jsb_fixture()
    json_path = write_jsb(tmp_path, data)
    arrays = {}
    for split, items in data.items():
        objects = np.empty(len(items), dtype=object)
        for i, chorale in enumerate(items):
            objects[i] = np.where(np.asarray(chorale) < 0, np.nan, np.asarray(chorale, dtype=float))
        arrays[split] = objects
    npz_path = tmp_path / "jsb.npz"
    np.savez(npz_path, **arrays)
    from_json = chorales.parse_jsb(json_path, ["train", "valid"], 4, "url")
    from_npz = chorales.parse_jsb(npz_path, ["train", "valid"], 4, "url")
    for a, b in zip(from_json, from_npz, strict=True):
        assert {**a, "sha256": ""} == {**b, "sha256": ""}


def test_acquire_from_url_downloads_into_the_data_dir_and_checks_the_checksum(server, tmp_path):
    body = json.dumps(jsb_fixture()).encode()
    server.files["/files/jsb.json"] = body
    data = {
        "source": "url",
        "music21": {"composer": "bach", "max_scores": None},
        "url": {
            "url": f"{server.base}/files/jsb.json",
            "sha256": sha(body),
            "steps_per_quarter": 4,
            "splits": ["train"],
        },
        "files": {"paths": []},
    }
    kept, skipped = chorales.acquire(data, download_dir=tmp_path)
    assert [c["id"] for c in kept] == ["train000", "train001"] and skipped == []
    assert (tmp_path / "jsb.json").read_bytes() == body
    data["url"]["sha256"] = "0" * 64
    (tmp_path / "jsb.json").unlink()
    with pytest.raises(DataError, match=re.escape("data.url.sha256")):
        chorales.acquire(data, download_dir=tmp_path)
    assert not (tmp_path / "jsb.json").exists()


def test_jsb_chorale_with_voices_out_of_order_names_it(tmp_path):
    data = jsb_fixture()
    data["train"][0] = [list(reversed(step)) for step in data["train"][0]]  # B, T, A, S
    path = write_jsb(tmp_path, data)
    with pytest.raises(DataError, match=re.escape(f"{path}: chorale train[0]: parts not in S > A > T > B")):
        chorales.parse_jsb(path, ["train"], 4, "http://x/jsb.json")


def test_a_jsb_file_trains_on_exactly_its_train_split_and_holds_out_valid_then_test(tmp_path):
    # ids sort test* < train* < valid*: the split, not the id order, decides who trains
    data = {
        "train": [[C] * 4 + [F] * 4, [F] * 4 + [G] * 4, [G] * 4 + [C] * 4],
        "valid": [[C] * 4 + [G] * 4, [G] * 8],
        "test": [[F] * 8, [C] * 8, [F] * 4 + [C] * 4],
    }
    path = write_jsb(tmp_path, data)
    parsed = chorales.parse_jsb(path, ["train", "valid", "test"], 4, "url")
    assert {c["id"]: c["split"] for c in parsed}["test000"] == "test"
    everyone = EncodingConfig("quarter", "none", 0, 100, "sorted", 0, None, 4)
    ds = encode(parsed, everyone)
    train = ds["chorale"].values[ds["split"].values == "train"].tolist()
    heldout = ds["chorale"].values[ds["split"].values == "heldout"].tolist()
    assert train == ["train000", "train001", "train002"]
    assert heldout == ["valid000", "valid001", "test000", "test001"]
    assert ds.attrs["n_train"] == 3
    # a shuffled order permutes within the train split; it never trains on another split
    for seed in range(5):
        shuffled = encode(parsed, EncodingConfig("quarter", "none", 0, 100, "shuffled", seed, 2, 3))
        trained = shuffled["chorale"].values[shuffled["split"].values == "train"].tolist()
        assert len(trained) == 2 and all(c.startswith("train") for c in trained)
    with pytest.raises(
        DataError, match=r"encoding.n_train: 4 training .* only 3 chorales of the file's 'train'"
    ):
        encode(parsed, EncodingConfig("quarter", "none", 0, 100, "sorted", 0, 4, 0))
    without_train = [c for c in parsed if c["split"] != "train"]
    with pytest.raises(DataError, match=r"add .train. to data\.url\.splits"):
        encode(without_train, everyone)
