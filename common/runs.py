"""Run folders: where each milestone writes what it produced, and how runs avoid destroying each other.

``runs/<milestone-id>/metrics.json`` holds the figures a check reads, next to
the model files and the pictures.  Which folder a run gets:

=======================================  ==================================
the run                                  its folder
=======================================  ==================================
``make p2-cnn``                          ``runs/p2-cnn/``
``make p2-cnn QUICK=1``                  ``runs/p2-cnn/quick/``
``make p1-numpy RUN=momentum0``          ``runs/p1-numpy/momentum0/``
``make p1-numpy RUN=momentum0 QUICK=1``  ``runs/p1-numpy/momentum0-quick/``
``--run-dir PATH``                       ``PATH``
=======================================  ==================================

So a 20-second quick run never replaces the model a 15-minute full run
trained, and ``make compare M=p1-numpy`` finds every run of a milestone
side by side.

**A run takes its folder's place only when it finishes.**  It writes into a
staging folder inside its own (``runs/p2-cnn/.partial-<pid>/``); ``finish_run``
moves what it produced into place, ``metrics.json`` last.  A run that fails
or is interrupted leaves the previous run whole; its staging folder is
removed by the next run of the same folder.  Each folder lists the entries
its run produced (``.run-contents``), so the next run removes only those
(and never a named run's folder inside it).

Files are written atomically (a temporary file, then a rename), so a crash
never leaves half a ``metrics.json`` behind for ``make progress`` to misread.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

RUNS_ENV = "ML60_RUNS_DIR"


QUICK_FOLDER = "quick"
CONTENTS_FILE = ".run-contents"      # the entries the folder's own run produced
STAGING_PREFIX = ".partial-"          # a run in progress (or one that died): .partial-<pid>
RUN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def runs_root() -> Path:
    return Path(os.environ.get(RUNS_ENV, "runs"))


def run_path(milestone_id: str, *, name: str | None = None, quick: bool = False) -> Path:
    """The folder of a run (see the table above); nothing is created."""
    base = runs_root() / milestone_id
    if name is not None:
        check_run_name(name)
        return base / (f"{name}-quick" if quick else name)
    return base / QUICK_FOLDER if quick else base


def check_run_name(name: str) -> str:
    """A run name is a folder name: letters, digits, ``-`` and ``_``; ``quick`` is taken by the quick runs."""
    if not RUN_NAME_RE.match(name) or name == QUICK_FOLDER or name.endswith("-quick"):
        raise ValueError(f"run name {name!r}: use letters, digits, '-' and '_' (at most 64, not starting with "
                         f"'-' or '_'), and not {QUICK_FOLDER!r} or a name ending in '-quick', which quick runs use")
    return name


def finished(folder: Path) -> bool:
    return (Path(folder) / "metrics.json").is_file()


def upstream_run(milestone_id: str) -> Path:
    """The run of an earlier milestone that a later one reads: the full run if there is one, else the quick one.

    A learner who trained ``p2-cnn`` for 15 minutes wants ``p3-onnx`` to
    export that model, even from ``make quickstart``; a learner who has only
    run the quick version still gets a pipeline that works.  When neither has
    finished, the full run's folder is returned, and the caller's error names it.
    """
    full, quick = run_path(milestone_id), run_path(milestone_id, quick=True)
    if finished(full) or not finished(quick):
        return full
    return quick


def describe_run(folder: Path) -> str:
    """``runs/p2-cnn/ (full run, finished 2026-11-26T10:00:00+00:00)``: what a later milestone says it used."""
    try:
        metrics = read_metrics(folder)
    except (OSError, ValueError):
        return f"{folder}/ (no finished run)"
    kind = "quick run" if metrics.get("quick") else "full run"
    return f"{folder}/ ({kind}, finished {metrics.get('finished_utc', '?')})"


# --------------------------------------------------------------------------- staging: a run takes its place at the end

_STAGED: dict[Path, Path] = {}       # staging folder -> the folder it will replace


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stage_run(final: Path) -> Path:
    """A fresh, empty staging folder inside ``final`` for a run that will replace ``final``'s run.

    Staging folders of runs that died (their process is gone) are removed
    first, with a word; one whose process still runs is left alone.
    """
    final = Path(final)
    final.mkdir(parents=True, exist_ok=True)
    for stale in final.glob(STAGING_PREFIX + "*"):
        pid = stale.name[len(STAGING_PREFIX):]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            print(f"[run] removing {stale}/, left by a run that did not finish (the run before it is untouched)")
            shutil.rmtree(stale, ignore_errors=True)
    staging = final / f"{STAGING_PREFIX}{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    _STAGED[staging.resolve()] = final
    return staging


def final_folder(staging: Path) -> Path | None:
    """The folder a staging folder will replace; None when ``staging`` is not one."""
    return _STAGED.get(Path(staging).resolve())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def publish_run(staging: Path) -> Path:
    """Move a finished run from ``staging`` into its folder; return the folder.

    1. the old ``metrics.json`` goes first: during the swap the folder has no
       finished run, rather than new figures beside old files;
    2. every entry the new run produced replaces the entry of the same name;
    3. the entries the previous run listed in ``.run-contents`` and this run
       did not produce are removed (a named run's folder is never listed);
    4. ``.run-contents``, then ``metrics.json``, last.
    """
    staging = Path(staging)
    final = _STAGED.pop(staging.resolve())
    produced = sorted(p.name for p in staging.iterdir() if p.name not in (CONTENTS_FILE, "metrics.json"))
    contents = final / CONTENTS_FILE
    try:
        previous = json.loads(contents.read_text()) if contents.is_file() else []
    except (OSError, ValueError):
        previous = []
    (final / "metrics.json").unlink(missing_ok=True)
    for name in produced:
        _remove(final / name)
        os.replace(staging / name, final / name)
    for name in previous:
        if name not in produced and isinstance(name, str) and "/" not in name and name not in ("", ".", ".."):
            _remove(final / name)
    atomic_write_bytes(contents, (json.dumps(produced + ["metrics.json"], indent=1) + "\n").encode())
    if (staging / "metrics.json").is_file():
        os.replace(staging / "metrics.json", final / "metrics.json")
    shutil.rmtree(staging, ignore_errors=True)
    return final


def moved_paths(value: Any, staging: Path, final: Path) -> Any:
    """``value`` with every path string inside ``staging`` rewritten to where it lies after :func:`publish_run`."""
    prefixes = {str(staging), str(Path(staging).resolve())}
    if isinstance(value, dict):
        return {k: moved_paths(v, staging, final) for k, v in value.items()}
    if isinstance(value, list):
        return [moved_paths(v, staging, final) for v in value]
    if isinstance(value, str):
        for prefix in prefixes:
            if value == prefix or value.startswith(prefix + os.sep):
                return str(final) + value[len(prefix):]
    return value


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: Path) -> Path:
    """``torch.save`` that never leaves half a file: serialise to memory, then write atomically."""
    import io

    import torch  # imported here: this module stays importable without torch (``make help``)

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def to_jsonable(value: Any) -> Any:
    """Plain JSON types from tensors, NumPy scalars, paths and dataclasses; NaN becomes null."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # torch / numpy
        return to_jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def write_json(path: Path, payload: dict) -> None:
    atomic_write_bytes(Path(path), (json.dumps(to_jsonable(payload), indent=2) + "\n").encode())


def read_metrics(run_dir: Path) -> dict:
    path = Path(run_dir) / "metrics.json"
    with open(path) as fh:
        return json.load(fh)


def update_metrics(run_dir: Path, **fields: Any) -> dict:
    """Merge ``fields`` into ``run_dir/metrics.json`` (created if missing) and return the result."""
    path = Path(run_dir) / "metrics.json"
    current = read_metrics(run_dir) if path.is_file() else {}
    current.update(to_jsonable(fields))
    write_json(path, current)
    return current
