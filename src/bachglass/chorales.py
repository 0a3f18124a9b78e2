"""Acquire four-part chorales: the music21 corpus, the user's own scores, or a JSB-Chorales file.

Every source ends as a list of Chorale dicts (see the module contract): per voice S, A, T, B a list of
``[onset, duration, midi]`` events in quarter notes, ``midi = -1`` for a rest. Keeping events rather than
a grid lets the encoding choose its resolution later without re-parsing anything.
"""

import glob
import hashlib
import http.client
import itertools
import json
import logging
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from music21 import common, converter, corpus, note, stream

from bachglass import io
from bachglass.errors import DataError

logger = logging.getLogger(__name__)

VOICES = ("S", "A", "T", "B")
# Formats music21 parses as scores; the corpus also holds .rntxt roman-numeral analyses, which are not.
SCORE_SUFFIXES = (".mxl", ".musicxml", ".xml", ".krn", ".mei")
# music21's default key finder (Aarden-Essen weights in the Krumhansl-Schmuckler algorithm).
KEY_METHOD = "key"
DOWNLOAD_TIMEOUT_S = 60
MANIFEST_COLUMNS = ("id", "source", "sha256", "parts", "status", "reason")


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in chunks (the JSB file is 1.7 MB, a score a few kB)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _one_line(err: Exception) -> str:
    """Return an exception's message on one line (it goes into a TSV cell or a one-line error)."""
    return " ".join(str(err).split()) or type(err).__name__


def _events(part: stream.Part) -> list[list[Any]]:
    """One voice as ``[onset, duration, midi]`` events: a chord's top note, -1 for a rest.

    Grace notes (zero duration) never sound on a grid, so they are dropped. Tied notes stay separate
    events; the sounding pitch over time is the same either way.
    """
    events = []
    for element in part.flatten().notesAndRests:
        duration = float(element.quarterLength)
        if duration <= 0:
            continue
        midi = -1 if element.isRest else max(p.midi for p in element.pitches)
        events.append([float(element.offset), duration, int(midi)])
    return events


def _satb_problem(voices: list[list[list[Any]]]) -> str | None:
    """Why these parts are not an S, A, T, B chorale, or None when they are one.

    The parts must be four and ordered from top to bottom by mean pitch, so that voice 0 really is the
    soprano; a score with the parts in another order would silently swap vocabularies.
    """
    if len(voices) != len(VOICES):
        return f"{len(voices)} parts (expected 4: S, A, T, B)"
    means = []
    for events in voices:
        pitches = [midi for _, _, midi in events if midi >= 0]
        if not pitches:
            return "a part has no notes"
        means.append(float(np.mean(pitches)))
    if not all(upper > lower for upper, lower in itertools.pairwise(means)):
        shown = ", ".join(f"{m:.1f}" for m in means)
        return f"parts not in S > A > T > B order of mean pitch (MIDI {shown})"
    return None


def _chorale(
    score: stream.Score, voices: list[list[list[Any]]], chorale_id: str, source: str, sha256: str
) -> dict[str, Any]:
    """Build the Chorale dict of a parsed four-part score whose parts gave ``voices``."""
    key = score.analyze(KEY_METHOD)
    return {
        "id": chorale_id,
        "source": source,
        "sha256": sha256,
        "key": {"tonic_pc": int(key.tonic.pitchClass), "mode": str(key.mode)},
        "length_quarters": max(onset + dur for events in voices for onset, dur, _ in events),
        "voices": voices,
    }


def _corpus_ids(paths: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Chorale id (the file stem) of each corpus score, and the duplicates among them.

    Three chorales exist both as .krn and .mxl (bwv277, bwv281, bwv366): the same music, in lengths
    that differ by repeats. Keeping both would count one chorale twice and could put it on both sides
    of the train/held-out split, so the file of the earlier format in ``SCORE_SUFFIXES`` is the
    chorale and the other is returned in ``duplicates`` (path -> the kept path).
    """
    ids: dict[str, str] = {}
    duplicates: dict[str, str] = {}
    first: dict[str, str] = {}
    for path in sorted(paths, key=lambda p: (SCORE_SUFFIXES.index(Path(p).suffix), p)):
        stem = Path(path).stem
        if stem in first:
            duplicates[path] = first[stem]
            ids[path] = f"{stem}-{Path(path).suffix.lstrip('.')}"  # unique manifest row id
        else:
            first[stem], ids[path] = path, stem
    return ids, duplicates


def load_music21_corpus(composer: str, max_scores: int | None) -> tuple[list[dict], list[dict]]:
    """Parse a composer's music21 corpus files; keep the four-part S, A, T, B chorales.

    Files are taken in the order of their corpus-relative path, so ``max_scores`` always selects the
    same files. A file that is not a score, does not parse or is not S, A, T, B is skipped, not fatal
    (the corpus holds cantata movements and analyses too); it comes back as a skipped row with its
    reason, so the manifest records every skip. Returns ``(kept, skipped)``.
    """
    root = Path(common.getCorpusFilePath())
    paths = sorted(Path(p).relative_to(root).as_posix() for p in corpus.getComposer(composer))
    paths = paths[:max_scores] if max_scores is not None else paths
    ids, duplicates = _corpus_ids([p for p in paths if Path(p).suffix in SCORE_SUFFIXES])
    kept, skipped = [], []
    for i, rel in enumerate(paths):
        if i and i % 50 == 0:
            logger.info("parsed %d of %d corpus files, %d chorales kept", i, len(paths), len(kept))
        row = {"id": Path(rel).stem, "source": rel, "sha256": file_sha256(root / rel), "parts": ""}
        if rel not in ids:
            skipped.append(row | {"reason": f"not a score ({Path(rel).suffix.lstrip('.')})"})
            continue
        row["id"] = ids[rel]
        if rel in duplicates:
            skipped.append(
                row | {"reason": f"duplicate of {duplicates[rel]} (the same chorale in another format)"}
            )
            continue
        try:
            score = converter.parse(root / rel)
        except Exception as err:  # music21's parsers raise many exception types on bad input
            skipped.append(row | {"reason": f"music21 could not parse it: {_one_line(err)}"})
            continue
        if not isinstance(score, stream.Score):
            skipped.append(row | {"reason": f"not a single score ({type(score).__name__})"})
            continue
        voices = [_events(part) for part in score.parts]
        row["parts"] = len(voices)
        if problem := _satb_problem(voices):
            skipped.append(row | {"reason": problem})
        else:
            kept.append(_chorale(score, voices, row["id"], rel, row["sha256"]))
    logger.info("%s corpus: %d chorales kept, %d files skipped", composer, len(kept), len(skipped))
    return kept, skipped


def load_score_files(patterns: list[str]) -> list[dict]:
    """Parse the user's own scores; every file must be an S, A, T, B chorale.

    Unlike the corpus, nothing is skipped: a user who names a file means it, so a bad file stops the
    run with its path. The id is the file stem and must be unique.
    """
    paths: list[str] = []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern, recursive=True))
        if not matched:
            raise DataError(f"{pattern}: matches no file; fix the pattern in data.files.paths")
        paths.extend(matched)
    chorales: dict[str, dict] = {}
    for path in paths:
        try:
            score = converter.parse(path)
        except Exception as err:  # music21's parsers raise many exception types on bad input
            msg = f"{path}: music21 cannot parse this score ({_one_line(err)}); fix or remove the file"
            raise DataError(msg) from err
        if not isinstance(score, stream.Score):
            raise DataError(f"{path}: holds a {type(score).__name__}, not one score; split it into files")
        voices = [_events(part) for part in score.parts]
        if len(voices) != len(VOICES):
            n = len(voices)
            raise DataError(f"{path}: {n} parts, expected 4 (S, A, T, B); keep only the four voices")
        if problem := _satb_problem(voices):
            raise DataError(f"{path}: {problem}; order the parts soprano, alto, tenor, bass")
        stem = Path(path).stem
        if stem in chorales:
            raise DataError(f"{path}: id {stem!r} also used by {chorales[stem]['source']}; rename one")
        chorales[stem] = _chorale(score, voices, stem, path, file_sha256(Path(path)))
    return [chorales[k] for k in sorted(chorales)]


def download(url: str, sha256: str, dest: Path) -> Path:
    """Download ``url`` to ``dest`` and check its SHA-256; reuse ``dest`` if it already matches.

    The bytes stream to a temporary sibling that is renamed onto ``dest`` only after the checksum
    matched, so a failed or tampered download never sits under the name a later run would trust.
    """
    dest = Path(dest)
    if dest.exists():
        if file_sha256(dest) == sha256:
            logger.info("%s: already downloaded, checksum matches", dest)
            return dest
        logger.info("%s: checksum differs from data.url.sha256; downloading again", dest)
    digest = hashlib.sha256()
    try:
        with (
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
            io.atomic_path(dest) as tmp,
            tmp.open("wb") as out,
        ):
            received = 0
            for chunk in iter(lambda: response.read(1 << 16), b""):
                digest.update(chunk)
                out.write(chunk)
                received += len(chunk)
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and received != int(length):
                # http.client ends a short body silently when read in chunks
                raise DataError(f"{url}: download cut short ({received} of {length} bytes); try again")
            if (got := digest.hexdigest()) != sha256:
                raise DataError(
                    f"{url}: sha256 {got} does not match data.url.sha256 {sha256}; "
                    "check the URL or update the checksum"
                )
    except (OSError, http.client.HTTPException, ValueError) as err:
        msg = f"{url}: download failed ({_one_line(err)}); check data.url.url and the network"
        raise DataError(msg) from err
    logger.info("downloaded %s to %s", url, dest)
    return dest


def _read_jsb(path: Path) -> dict[str, Any]:
    """Read the splits of a JSB-Chorales file: a JSON object, or an NPZ archive (NaN = silent)."""
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=True, encoding="latin1") as archive:
                return {name: list(archive[name]) for name in archive.files}
        data = json.loads(path.read_text())
    except Exception as err:  # json, zipfile and pickle each raise their own types on a bad file
        msg = f"{path}: not a JSB-Chorales JSON or NPZ file ({_one_line(err)}); check data.url"
        raise DataError(msg) from err
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object of splits, got {type(data).__name__}")
    return data


def _jsb_pitches(chorale: Any, where: str) -> np.ndarray:
    """One chorale's steps as an int array (steps, 4), -1 = silent; ``where`` names it in errors."""
    if not hasattr(chorale, "__len__") or len(chorale) == 0:
        raise DataError(f"{where}: not a non-empty list of steps; fix the file or its URL")
    for k, step in enumerate(chorale):
        if not hasattr(step, "__len__") or len(step) != len(VOICES):
            raise DataError(f"{where}, step {k}: {step!r} is not 4 pitches (S, A, T, B)")
        if not all(isinstance(x, int | float | np.number) and not isinstance(x, bool) for x in step):
            raise DataError(f"{where}, step {k}: non-numeric pitch in {step!r}")
    steps = np.array(chorale, dtype=float)
    steps[np.isnan(steps)] = -1
    bad = (steps != np.round(steps)) | (steps < -1) | (steps > 127)
    if bad.any():
        k = int(np.flatnonzero(bad.any(axis=1))[0])
        raise DataError(f"{where}, step {k}: {chorale[k]!r} is not MIDI pitches 0-127 or -1")
    return steps.astype(int)


def _runs(column: np.ndarray, steps_per_quarter: int) -> list[list[Any]]:
    """Merge consecutive equal steps into events: the file cannot tell held from repeated notes."""
    starts = np.flatnonzero(np.r_[True, column[1:] != column[:-1]])
    ends = np.r_[starts[1:], len(column)]
    q = steps_per_quarter
    return [[float(s / q), float((e - s) / q), int(column[s])] for s, e in zip(starts, ends, strict=True)]


def _key(pitches: np.ndarray, steps_per_quarter: int) -> dict[str, Any]:
    """music21's key analysis of a pitch array, offline.

    The key finder only sees the duration of each pitch class, so a stream of at most 12 notes
    carrying those durations gives the same answer as the full score, far faster.
    """
    sounding = pitches[pitches >= 0]
    durations = np.bincount(sounding % 12, minlength=12) / steps_per_quarter
    summary = stream.Stream()
    for pc in np.flatnonzero(durations):
        summary.append(note.Note(60 + int(pc), quarterLength=float(durations[pc])))
    key = summary.analyze(KEY_METHOD)
    return {"tonic_pc": int(key.tonic.pitchClass), "mode": str(key.mode)}


def parse_jsb(path: Path, splits: list[str], steps_per_quarter: int, source_url: str) -> list[dict]:
    """Chorale dicts from a JSB-Chorales file: ids ``<split><index:03d>``, sorted by id.

    Each keeps its split (``split``): encoding trains on the file's ``train`` split and holds out the
    others (:func:`bachglass.encoding.select`), whatever the ids' sort order.

    Each step of the file is one ``[S, A, T, B]`` chord on a grid of ``steps_per_quarter`` steps per
    quarter note; runs of the same pitch become one event.
    """
    path = Path(path)
    data = _read_jsb(path)
    sha256 = file_sha256(path)
    chorales = []
    for split in splits:
        if split not in data:
            present = ", ".join(map(str, data)) or "none"
            raise DataError(f"{path}: no split {split!r} (the file has: {present}); fix data.url.splits")
        for index, raw in enumerate(data[split]):
            pitches = _jsb_pitches(raw, f"{path}: chorale {split}[{index}]")
            if not (pitches >= 0).any():
                raise DataError(f"{path}: chorale {split}[{index}] has no notes; fix the file")
            voices = [_runs(pitches[:, v], steps_per_quarter) for v in range(len(VOICES))]
            if problem := _satb_problem(voices):
                where = f"{path}: chorale {split}[{index}]"
                raise DataError(f"{where}: {problem}; each step must list [S, A, T, B] pitches")
            chorales.append(
                {
                    "id": f"{split}{index:03d}",
                    "split": split,  # the file's own split: "train" trains, the others are held out
                    "source": f"{source_url}#{split}/{index}",
                    "sha256": sha256,
                    "key": _key(pitches, steps_per_quarter),
                    "length_quarters": len(pitches) / steps_per_quarter,
                    "voices": voices,
                }
            )
    return sorted(chorales, key=lambda c: c["id"])


def manifest_rows(kept: list[dict], skipped: list[dict]) -> list[dict[str, str]]:
    """Rows of manifest.tsv, sorted by id: every kept chorale and every skipped file with its reason.

    Values are strings, ready for a TSV writer; ``parts`` is empty when the file was never parsed.
    """
    rows = [
        {"id": c["id"], "source": c["source"], "sha256": c["sha256"], "parts": "4", "status": "kept"}
        | {"reason": ""}
        for c in kept
    ]
    rows += [{k: str(s[k]) for k in ("id", "source", "sha256", "parts", "reason")} for s in skipped]
    for row in rows:
        row.setdefault("status", "skipped")
    return [
        {k: row[k] for k in MANIFEST_COLUMNS} for row in sorted(rows, key=lambda r: (r["id"], r["source"]))
    ]


def acquire(data: dict[str, Any], download_dir: Path) -> tuple[list[dict], list[dict]]:
    """Chorales from the source that the ``data`` params section selects, as ``(kept, skipped)``.

    The music21 corpus mixes chorales with other scores, so non-SATB scores are skipped and listed; a
    download and the user's own files are strict (any bad chorale stops the run, naming it).
    """
    source = data["source"]
    if source == "music21":
        return load_music21_corpus(data["music21"]["composer"], data["music21"]["max_scores"])
    if source == "files":
        return load_score_files(data["files"]["paths"]), []
    url = data["url"]
    name = Path(urllib.parse.urlparse(url["url"]).path).name or "chorales.json"
    path = download(url["url"], url["sha256"], Path(download_dir) / name)
    return parse_jsb(path, url["splits"], url["steps_per_quarter"], url["url"]), []
