"""The course as documents: sixty days, each with its entry; links that resolve; commands that exist.

A learner follows the README's table of the sixty days into the phase
guides, and types the commands they name.  These checks keep that path
whole: every day 1-60 has exactly one entry, in its phase's guide, saying
what to read, write, run and expect, with a question and its answer; every
exercise belongs to a day; the README's table is the one the guides imply;
every relative link and anchor resolves; every ``make`` target named in a
command exists; and no command points at a machine's private dataset folder.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from ml60 import days as course

ROOT = Path(__file__).resolve().parent.parent
FIGURE_DOCS = (ROOT / "README.md", ROOT / "phase3_production" / "README.md", ROOT / "benchmarks" / "README.md")
FIELDS = ("**Read:**", "**Write:**", "**Run:**", "**Expect:**", "**Question:**")


def tracked_markdown() -> list[Path]:
    """The documents git tracks; without git (a downloaded archive), every README the tree has."""
    try:
        out = subprocess.run(["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        return [ROOT / line for line in out.split()]
    except (OSError, subprocess.CalledProcessError):
        return sorted([*ROOT.glob("*.md"), *ROOT.glob("*/README.md")])


@pytest.fixture(scope="module")
def days() -> list[course.Day]:
    return course.read_days(ROOT)


@pytest.mark.parametrize("phase", [1, 2, 3])
def test_every_day_has_one_entry_in_its_phase_guide(days, phase):
    guide = course.GUIDES[phase]
    found = [d.day for d in days if d.guide == guide]
    expected = list(range(20 * (phase - 1) + 1, 20 * phase + 1))
    missing = sorted(set(expected) - set(found))
    assert not missing, f"{guide}: no entry for day(s) {missing} (an anchor <a id=\"day-N\"></a> then '### Day N: title')"
    assert found == expected, f"{guide}: days out of order, repeated or from another phase: {found}"


@pytest.mark.parametrize("phase", [1, 2, 3])
def test_each_day_says_what_to_read_write_run_and_expect_and_asks_a_question(days, phase):
    problems = []
    for d in (d for d in days if d.phase == phase):
        lacking = [field for field in FIELDS if field not in d.text]
        if lacking:
            problems.append(f"day {d.day} lacks {', '.join(lacking)}")
        elif "<details><summary>Answer</summary>" not in d.text.split("**Question:**", 1)[1]:
            problems.append(f"day {d.day}: the question has no folded answer (<details><summary>Answer</summary>)")
    assert not problems, "; ".join(problems)


def test_every_exercise_belongs_to_a_day(days):
    from ml60.exercises import all_exercises

    linked = {ex_id for d in days for ex_id in d.exercises}
    missing = sorted(ex.id for ex in all_exercises() if ex.id not in linked)
    assert not missing, f"exercises no day links to ([p1-numpy.1](#p1-numpy.1) in the day's **Write:**): {missing}"


def test_the_readme_holds_the_table_the_guides_imply():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert course.table(ROOT) in readme, ("the README's table of the sixty days differs from the guides' day "
                                          "entries: paste the output of `python -m ml60 days` into it")


# --------------------------------------------------------------------------- links, anchors, commands


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_\[\]()]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    found = set(re.findall(r'<a id="([^"]+)"></a>', text))
    found |= {slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, re.M)}
    return found


def links(text: str) -> list[str]:
    without_code = re.sub(r"```.*?```", "", text, flags=re.S)
    without_code = re.sub(r"`[^`\n]*`", "", without_code)
    return re.findall(r"\]\(([^)\s]+)\)", without_code)


@pytest.mark.parametrize("doc", tracked_markdown(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(doc):
    broken = []
    for target in links(doc.read_text(encoding="utf-8")):
        if re.match(r"^[a-z]+:", target):        # https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        path = (doc.parent / path_part).resolve() if path_part else doc
        if not path.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target} (no such anchor in {path.relative_to(ROOT)})")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)


def make_targets() -> set[str]:
    from ml60.milestones import MILESTONES

    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = {m.id for m in MILESTONES}
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9 _-]*):(?![=:])", line)
        if match:
            targets |= set(match[1].split())
    return targets


def commands(text: str) -> list[str]:
    code = re.findall(r"```.*?```", text, flags=re.S) + re.findall(r"`([^`\n]+)`", text)
    return [m for block in code for m in re.findall(r"\bmake ([a-z][a-z0-9-]*)", block)]


@pytest.mark.parametrize("doc", tracked_markdown(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_make_command_in_the_docs_exists(doc):
    unknown = sorted(set(commands(doc.read_text(encoding="utf-8"))) - make_targets())
    assert not unknown, f"{doc.relative_to(ROOT)} names make targets the Makefile lacks: {unknown}"


@pytest.mark.parametrize("doc", tracked_markdown(), ids=lambda p: str(p.relative_to(ROOT)))
def test_commands_name_the_learners_data_folder(doc):
    text = doc.read_text(encoding="utf-8")
    assert "shared/datasets" not in text, (
        f"{doc.relative_to(ROOT)} points at a machine's own dataset folder: name the learner's ./data (the "
        "default) or DATA_DIR=..., and the README's Data section says where the files come from")


def test_the_hostile_upload_count_the_docs_state_is_the_list_the_self_test_sends():
    """The docs' "N / N hostile uploads" is the length of bad_inputs.cases(), which the quick and the full
    self-test both send whole (the list does not depend on the model or the data)."""
    from phase3_production import bad_inputs
    from phase3_production.serving.config import Settings

    settings = Settings()
    sent = len(bad_inputs.cases(settings.max_body_bytes, settings.max_batch_files, settings.max_pixels))
    stated = []
    for doc in FIGURE_DOCS:
        for line in doc.read_text(encoding="utf-8").splitlines():
            if line.startswith("| p3-serve") and "hostile" in line:
                stated += [(doc.name, int(a)) for a, b in re.findall(r"(\d+) / (\d+) \|", line) if a == b and a != "500"]
    assert len(stated) == 3, stated
    assert all(count == sent for _, count in stated), f"the self-test sends {sent} hostile uploads; the docs say {stated}"


RESULTS_BEHIND_COMPRESSION = ("p3_onnx.json", "p3_onnx_h200.json", "distill.json")


def _numbers(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _numbers(v)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield float(value)


def test_every_int8_and_distillation_figure_the_docs_state_is_in_benchmarks_results():
    """An INT8 or distillation accuracy ("86.55%") or ratio ("2.73x") in the docs is one the results hold.

    The figures come from `make p3-onnx` and `make distill`, which write benchmarks/results/; re-measuring
    on a new model changes the JSON, and a doc still quoting the old model fails here.
    """
    held = [n for name in RESULTS_BEHIND_COMPRESSION
            for n in _numbers(json.loads((ROOT / "benchmarks" / "results" / name).read_text()))]
    held_as = {"%": {f"{100 * n:.2f}" for n in held if 0 <= n <= 1}, "x": {f"{n:.2f}" for n in held}}
    stated, missing = 0, []
    for doc in FIGURE_DOCS:
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            if not (re.search(r"INT8|int8", line) or line.startswith("| distill")):
                continue
            for figure, unit in re.findall(r"(\d+\.\d\d)([%x])", line):
                stated += 1
                missing += [] if figure in held_as[unit] else [f"{doc.name}:{number}: {figure}{unit}"]
    assert stated > 40, f"only {stated} INT8 / distillation figures found in the docs: has the wording changed?"
    assert not missing, f"figures the docs state that benchmarks/results/ does not hold: {missing}"
