"""Merge the probe records into one table: every site, its worst value per configuration, its margin.

The margin is read in the direction the site asserts:

* ``x < tol`` (the correct code must stay under): ``tol / largest x``;
* ``x > tol`` (a wrong step must show up): ``smallest x / tol``;
* ``allclose``-style and ``approx``: ``1 / largest share`` of the tolerance
  used, or, where every case is meant to differ (``assert not allclose``),
  the smallest share.

Records from the tests that feed the checks *wrong* answers on purpose
(:data:`WRONG_ANSWER_TESTS`) are kept apart: there the check must fail, and
the table gives how far the nearest wrong answer sits beyond the tolerance.
A site whose correct-code values fall on both sides of the tolerance holds
several cases (some meant to pass, some to fail) and is listed as such.

The margin is the measure for a tolerance on rounding.  For a few sites it is
the wrong one (a bound that a correct value may touch, a statistic of random
draws): :data:`EXPLAINED` gives each its reason.  Such a site is cleared only
while its correct-code values are the same at every configuration, so that
nothing in it depends on the threads; if they move, it is flagged like any other.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

WRONG_ANSWER_TESTS = ("tests/test_exercises.py", "tests/test_check_mutants.py")
ENOUGH = 10.0   # a margin below this is flagged

# (file, a fragment of the site's text) -> why tolerance / value is not the measure there.
EXPLAINED = {
    ("tests/test_loaders.py", "x.max() <= (1 - 0.5) / 0.25 + 1e-6"):
        "a bound, not a tolerance: a white pixel normalises to exactly 2.0; the slack only absorbs rounding",
    ("tests/exercises/test_p2_search.py", "values.max() <= high * (1 + 1e-9)"):
        "a bound, not a tolerance: a draw may land on the range's end; the slack only absorbs exp(log(x)) rounding",
    ("phase2_depth/p2_data.py", "PIPELINE_TOLERANCE"):
        "a statistic of random draws: two pipelines augment with different random streams, so their statistics "
        "differ by sampling noise of the (seeded) images, not by rounding",
    ("tests/test_p1_train_refactor.py", "REPRODUCE_TOLERANCE"):
        "a statistic of random draws: the plain loop and the classes shuffle MNIST with different streams, so "
        "their accuracies differ by run-to-run training noise (0.06 points), not by rounding",
}


def explanation(site: dict) -> str | None:
    return next((why for (file, fragment), why in EXPLAINED.items()
                 if site["file"] == file and fragment in site["text"]), None)


def load(record_dir: Path) -> dict:
    """{site: {"ref"|"wrong": {key: [min, max]}}} merged over every process file in ``record_dir``."""
    merged: dict = {}
    for path in sorted(record_dir.glob("*.json")):
        for site, nodes in json.loads(path.read_text()).items():
            for node, keys in nodes.items():
                group = "wrong" if node.startswith(WRONG_ANSWER_TESTS) else "ref"
                slot = merged.setdefault(site, {}).setdefault(group, {})
                for key, (low, high, _) in keys.items():
                    old = slot.get(key, [math.inf, -math.inf])
                    slot[key] = [min(old[0], low), max(old[1], high)]
    return merged


def margin(site: dict, ref: dict | None) -> tuple[float | None, str]:
    """(margin, how it reads) for the correct code's values at one configuration."""
    if not ref:
        return None, "not reached"
    if site["kind"] == "compare":
        if "value" not in ref or "tol" not in ref:
            return None, "not reached"
        (low, high), tol = ref["value"], ref["tol"][1]
        below = site["op"] in ("<", "<=")
        if below and high < tol or not below and low > tol:
            return (tol / high if high > 0 else math.inf) if below else (low / tol if tol > 0 else math.inf), \
                "under" if below else "over"
        return None, f"both sides ({fmt(low)} .. {fmt(high)} vs {fmt(tol)})"
    if "share" not in ref:
        return None, "not reached"
    low, high = ref["share"]
    if high < 1:
        return (1 / high if high > 0 else math.inf), "within"
    if low >= 1:
        return low, "apart"
    return None, f"both sides (share {fmt(low)} .. {fmt(high)})"


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if v == 0:
        return "0"
    if math.isinf(v):
        return "inf"
    return f"{v:.2g}"


def tolerance_text(site: dict) -> str:
    if site["kind"] == "compare":
        return f"`{site['op']} {site['tolerance']}`"
    if site["kind"] == "close":
        return f"`{site['function_called']}({site['tolerance'] or 'defaults'})`"
    text = site["text"]
    return "`" + text[text.rfind("approx("):] + "`"


def rows(sites: list[dict], per_config: dict[str, dict]) -> list[dict]:
    """One row per site: worst values and margins per configuration, the overall margin, a flag."""
    out = []
    for site in sites:
        sid = str(site["id"])
        row = {"site": f"{site['file']}:{site['line']}", "function": site["function"], "text": site["text"],
               "tolerance": tolerance_text(site), "worst": {}, "margins": {}, "wrong": {}}
        found = {config: records.get(sid, {}) for config, records in per_config.items()}
        refs = [f.get("ref") for f in found.values()]
        row["same_everywhere"] = bool(refs[0]) and all(r == refs[0] for r in refs)
        for config, f in found.items():
            ref = f.get("ref")
            key = "value" if site["kind"] == "compare" else "share"
            if ref and key in ref:
                row["worst"][config] = ref["value"][1] if "value" in ref else None
            m, reading = margin(site, ref)
            row["margins"][config] = (m, reading)
            wrong = f.get("wrong")
            if wrong:
                row["wrong"][config] = margin(site, wrong)
        numbers = [m for m, _ in row["margins"].values() if m is not None]
        readings = {r for m, r in row["margins"].values() if m is None}
        row["margin"] = min(numbers) if numbers else None
        row["reading"] = next(iter({r for m, r in row["margins"].values() if m is not None}), "") if numbers else \
            "; ".join(sorted(readings))
        row["explained"] = explanation(site)
        cleared = row["explained"] is not None and row["same_everywhere"] and len(per_config) > 1
        row["flag"] = row["margin"] is not None and row["margin"] < ENOUGH and not cleared
        out.append(row)
    return out


def markdown(table: list[dict], configs: list[str], header: str = "") -> str:
    lines = [header,
             "| site | function | tolerance | " + " | ".join(f"worst @{c}" for c in configs)
             + " | same at every config | margin | note |",
             "|---|---|---|" + "---|" * len(configs) + "---|---|---|"]
    for row in table:
        worst = [fmt(row["worst"].get(c)) for c in configs]
        if row["margin"] is None:
            m = "-"
        else:
            m = ("inf" if math.isinf(row["margin"]) else f"{row['margin']:.3g}x") + (" **< 10x**" if row["flag"] else "")
        note = row["reading"]
        if row.get("explained"):
            note += ("; " if note else "") + "explained: " + row["explained"]
        wrong = [w for w in row["wrong"].values() if w[0] is not None]
        if wrong:
            note += f"; wrong answers: {wrong[0][1]} by {fmt(min(w[0] for w in wrong))}x"
        tolerance = row["tolerance"].replace("|", r"\|")
        same = "yes" if row.get("same_everywhere") else "no" if row["worst"] else "-"
        lines.append(f"| {row['site']} | {row['function']} | {tolerance} | {' | '.join(worst)} | {same} | {m} | {note} |")
    return "\n".join(lines) + "\n"
