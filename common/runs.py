"""Run folders: where each milestone writes what it produced.

``runs/<milestone-id>/metrics.json`` holds the figures a check reads, next to
the model files and the pictures.  Files are written atomically (a temporary
file, then a rename), so a crash never leaves half a ``metrics.json`` behind
for ``make progress`` to misread.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

RUNS_ENV = "ML60_RUNS_DIR"


def runs_root() -> Path:
    return Path(os.environ.get(RUNS_ENV, "runs"))


def run_dir_for(milestone_id: str, run_dir: str | Path | None = None) -> Path:
    """``run_dir`` if given, else ``runs/<milestone_id>``; created if missing."""
    path = Path(run_dir) if run_dir is not None else runs_root() / milestone_id
    path.mkdir(parents=True, exist_ok=True)
    return path


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
