"""Resumable training: checkpoint files, their checks, and stopping on SIGTERM / SIGINT.

The resumable state of every run is written every ``resume_every`` steps to its ``checkpoint``
file (:func:`save`, each file atomically); the caller deletes it (:func:`remove_checkpoint`) once
the trajectory is safely written. SIGTERM (SLURM preemption, time limit, scancel) and SIGINT
(Ctrl-C) save it at the next step boundary and then stop the process (:func:`stop`: exit status
143, resp. KeyboardInterrupt), so no step is lost. A SIGKILL loses the steps since the last save;
a kill while a checkpoint is written leaves the previous one intact. A checkpoint resumes only the
run it was written for (:func:`load`), and runs of one pack saved a save apart are brought back
together (:func:`align`), so a resumed run ends bitwise as it would have uninterrupted.
"""

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from bachglass import io, pack_state
from bachglass.errors import DataError, ParamsError

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def remove_checkpoint(path: str | Path) -> None:
    """Delete a run's resumable checkpoint, and any half-written one, once its trajectory is written."""
    path = Path(path)
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".tmp").unlink(missing_ok=True)


@contextlib.contextmanager
def stop_signals() -> Iterator[list[int]]:
    """Catch SIGTERM and SIGINT for the block: the list it yields receives their numbers.

    Outside the main thread (where Python cannot install handlers) nothing is caught.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {sig: signal.signal(sig, lambda signum, _: received.append(signum)) for sig in STOP_SIGNALS}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def save(ens: pack_state.PackState, saving: list[tuple[Path, int]], identities: list[dict[str, Any]]) -> None:
    """Write every run's resumable state at ``ens.step``, each file atomically."""
    ens.flush()
    for path, m in saving:
        with io.atomic_path(path) as tmp:
            torch.save(ens.state(m, identities[m]), tmp)
    log.debug("step %d of %d: resumable state saved", ens.step, ens.config.steps)  # the rule's log only


def stop(
    ens: pack_state.PackState, saving: list[tuple[Path, int]], identities: list[dict[str, Any]], signum: int
) -> None:
    """Save the state (when there is a checkpoint file) and stop as the signal ``signum`` asks."""
    name = signal.Signals(signum).name
    if saving:
        save(ens, saving, identities)
    log.warning(
        "%s at step %d of %d: %s; run the step again to resume",
        *(name, ens.step, ens.config.steps),
        "resumable state saved" if saving else "no checkpoint file given, nothing saved",
    )
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def align(
    states: list[dict[str, Any] | None], paths: list[Path | None], seeds: list[int]
) -> list[dict[str, Any] | None]:
    """Step back the runs of a cohort saved one save ahead of the rest, so that it trains as one again.

    A cohort's runs are saved one file after the other; a kill in between leaves some a save ahead.
    Resumed apart they would differ from an uninterrupted run by round-off; from the state of the
    save before, which their checkpoint carries (none before the first: start over), they rejoin
    their cohort-mates and resume bitwise. Runs saved in other cohorts, or further apart, stay apart.
    A state at step 0 is the seeded initial state itself, so it counts as none.
    """
    states = [None if state is None or state["counters"][0] == 0 else state for state in states]
    step = {
        seed: 0 if state is None else state["counters"][0] for seed, state in zip(seeds, states, strict=True)
    }
    aligned = []
    for state, path in zip(states, paths, strict=True):
        if state is not None:
            start = min(step.get(mate, state["counters"][0]) for mate in state["pack"])
            previous = state["previous"]
            if state["counters"][0] > start and previous is None and start == 0:
                log.info("%s: starts over with the rest of its pack", path)
                state = None
            elif state["counters"][0] > start and previous is not None and previous["counters"][0] == start:
                log.info("%s: back to step %d, where the rest of its pack resumes", path, start)
                n, snapshots = previous["n_records"], state["snapshots"]
                records = {key: values[:n] for key, values in state["records"].items()}
                state = state | previous | {"records": records, "snapshots": snapshots[:n] if n else None}
                state["previous"] = None
        aligned.append(state)
    return aligned


def load(path: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """Read a resumable state; refuse one written for another run (or by other code) or unreadable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        stored = dict(state["identity"])
    except Exception as err:  # torch.load raises many kinds for a damaged file
        raise DataError(f"{path}: unreadable checkpoint ({err}); delete it to start over") from err
    differ = sorted(k for k in identity.keys() | stored.keys() if stored.get(k) != identity.get(k))
    if differ:
        was = ", ".join(f"{k}={stored.get(k)!r} (now {identity.get(k)!r})" for k in differ)
        raise ParamsError(f"{path}: checkpoint of a different run: {was}; delete it to start over")
    missing = {*pack_state.SAVED, "records", "snapshots", "previous", "pack"} - state.keys()
    if missing:
        raise DataError(f"{path}: checkpoint without {sorted(missing)}; delete it to start over")
    return state
