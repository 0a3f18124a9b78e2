"""Errors for bad input that a user can fix, and the one broad boundary that reports them.

A ``BachglassError`` is shown as one line, ``<where>: <what is wrong>; <what to do>``, with no traceback.
Our own bugs are not ``BachglassError`` and keep their traceback.
"""

import logging
import sys
from collections.abc import Callable
from pathlib import Path


class BachglassError(Exception):
    """Bad input the user can fix; its message names the file or key."""


class ParamsError(BachglassError):
    """The merged configuration breaks the schema or a cross-key rule."""


class DataError(BachglassError):
    """A score, manifest, download or NetCDF file is unusable."""


def run_step(main: Callable[[], None], log: str | Path | None = None) -> None:
    """Run a workflow step; report a ``BachglassError`` as one line on stderr and in the log, exit 1.

    Library logging from INFO on goes to stderr (beside a training job's progress bar) and, when given,
    to the rule's log file, which gets bachglass's DEBUG lines too (each resumable save). The file is
    appended to: a script run by hand keeps earlier attempts; Snakemake deletes a rule's log before each
    job, and on SLURM the job's own log keeps every attempt. Our own bugs keep their traceback, in the log
    too.
    """
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.INFO)
    handlers: list[logging.Handler] = [console]
    if log is not None:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log, mode="a"))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", handlers=handlers, force=True
    )
    logging.getLogger("bachglass").setLevel(logging.DEBUG)  # to the log file only: the console takes INFO
    try:
        main()
    except BachglassError as err:
        logging.getLogger("bachglass").error("error: %s", err)
        sys.exit(1)
    except Exception:
        logging.getLogger("bachglass").exception("unexpected error (a bug in bachglass):")
        raise
