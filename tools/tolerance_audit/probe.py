"""The recording side of the audit: imported by every spliced site (``__import__('tests._tolprobe')``).

:mod:`.splice` copies this file into the audited tree as ``tests/_tolprobe.py``,
so any process that can import the tree's packages (pytest, and the milestone
runs tests start with ``python -m``) records.  Each process writes
``$TOLPROBE_OUT/<pid>.json`` when it exits:

    {site id: {test node id: {"value": [min, max, n], "share": [...], "tol": [...]}}}

* ``value``: the measured quantity: ``|x|`` for a comparison ``x < tol`` (the
  largest element for an array), ``max |a - b|`` for an ``allclose``-style call;
* ``share``: for ``allclose``-style calls and ``approx``, the largest
  ``|a - b| / (atol + rtol |b|)``: 1 means the tolerance is used up;
* ``tol``: the tolerance a comparison was made against.

Every probe returns its argument unchanged and never raises: the audited
code behaves exactly as it would without it.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import sys

import numpy as np

NODE = {"id": "process:" + " ".join(sys.argv[:3])}
RECORDS: dict = {}
PENDING: dict = {}

# numpy / pytest defaults where a call leaves them out: (rtol, atol)
DEFAULTS = {"allclose": (1e-5, 1e-8), "isclose": (1e-5, 1e-8), "assert_allclose": (1e-7, 0.0)}


def as_array(value) -> np.ndarray:
    try:
        import torch
        if torch.is_tensor(value):
            return value.detach().to("cpu").double().numpy()
    except ImportError:   # pragma: no cover - the course always has torch
        pass
    return np.asarray(value, dtype=np.float64)


def put(site: int, key: str, value: float) -> None:
    if value is None or math.isnan(value):
        return
    slot = RECORDS.setdefault(str(site), {}).setdefault(NODE["id"], {})
    low, high, n = slot.get(key, [math.inf, -math.inf, 0])
    slot[key] = [min(low, value), max(high, value), n + 1]


def compared(site: int, x, tol):
    """``x < tol`` becomes ``compared(site, x, tol) < tol``."""
    try:
        if not isinstance(x, bool):
            put(site, "value", float(np.abs(as_array(x)).max()))
        put(site, "tol", float(tol))
    except Exception:   # noqa: BLE001 - a probe never changes what the audited code does
        pass
    return x


def first(site: int, a):
    """The first argument of an ``allclose``-style call (or the left side of ``== approx(...)``)."""
    PENDING[site] = a
    return a


def close_second(site: int, fn: str, b, atol=None, rtol=None, abs_tol=None, rel_tol=None):
    """The second argument of ``fn(a, b, ...)``: records ``max |a - b|`` and the share of the tolerance used."""
    try:
        a = PENDING.pop(site)
        x, y = as_array(a), as_array(b)
        diff = np.abs(x - y)
        if fn == "assert_close":   # torch.testing's defaults depend on the dtype
            import torch
            dtype = a.dtype if torch.is_tensor(a) else torch.float64
            r0, a0 = {torch.float32: (1.3e-6, 1e-5), torch.float64: (1e-7, 1e-7),
                      torch.float16: (1e-3, 1e-5)}.get(dtype, (0.0, 0.0))
            tol = (a0 if atol is None else atol) + (r0 if rtol is None else rtol) * np.abs(y)
        elif fn == "isclose" and (abs_tol is not None or rel_tol is not None or isinstance(a, float)):
            r0, a0 = (1e-9 if rel_tol is None else rel_tol), (0.0 if abs_tol is None else abs_tol)   # math.isclose
            tol = np.maximum(r0 * np.maximum(np.abs(x), np.abs(y)), a0)
        else:
            r0, a0 = DEFAULTS.get(fn, (1e-5, 1e-8))
            tol = (a0 if atol is None else atol) + (r0 if rtol is None else rtol) * np.abs(y)
        put(site, "value", float(diff.max()) if diff.size else 0.0)
        share = np.where(diff == 0, 0.0, diff / np.where(tol > 0, tol, 1e-300))
        put(site, "share", float(share.max()) if share.size else 0.0)
    except Exception:   # noqa: BLE001
        pass
    return b


def approx_second(site: int, approx):
    """The ``approx(...)`` of ``actual == approx(expected, ...)``."""
    try:
        try:
            from _pytest.approx import ApproxScalar          # pytest 9
        except ImportError:   # pragma: no cover - pytest 8
            from _pytest.python_api import ApproxScalar
        actual = PENDING.pop(site)
        pairs = [(actual, approx.expected)] if isinstance(approx, ApproxScalar) else list(approx._yield_comparisons(actual))
        worst_diff, worst_share = 0.0, 0.0
        for a, e in pairs:
            if isinstance(a, bool) or isinstance(e, bool) or not isinstance(e, (int, float, np.number)):
                continue
            diff = abs(float(a) - float(e))
            tol = ApproxScalar(e, rel=approx.rel, abs=approx.abs, nan_ok=approx.nan_ok).tolerance
            worst_diff = max(worst_diff, diff)
            worst_share = max(worst_share, diff / tol if tol > 0 else (0.0 if diff == 0 else math.inf))
        put(site, "value", worst_diff)
        put(site, "share", worst_share)
    except Exception:   # noqa: BLE001
        pass
    return approx


def dump() -> None:
    out = os.environ.get("TOLPROBE_OUT")
    if out and RECORDS:
        with open(os.path.join(out, f"{os.getpid()}.json"), "w") as fh:
            json.dump(RECORDS, fh)


atexit.register(dump)


# ---- the pytest side: loaded with ``-p tests._tolprobe`` -------------------------------------------------

def pytest_configure(config):
    if os.environ.get("TOLPROBE_DETERMINISTIC") == "1":
        import torch
        torch.use_deterministic_algorithms(True)


def pytest_runtest_setup(item):
    NODE["id"] = item.nodeid
