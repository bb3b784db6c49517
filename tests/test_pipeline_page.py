"""PIPELINE.md is the code's own account of the pipeline: regenerated in memory, it must equal the committed page.

A constant changed in the code (a mean, a limit of the service, the ONNX
opset), a function renamed or moved: the page generated from the code then
differs from the one committed, and the first test fails with the command
that regenerates it.  The others check that every function the page names
exists where the page says, that the two sides still agree on what the page
checks, and that the page really follows the code (a patched constant or a
renamed function shows up in it).
"""

from __future__ import annotations

import difflib
import re

import pytest

from phase3_production import pipeline

COMMITTED_PAGE = pipeline.HERE / pipeline.PAGE_NAME
COMMITTED_PICTURE = pipeline.HERE / pipeline.PICTURE_NAME
CODE_LINE = re.compile(r"^- \[`(?P<path>[^`]+)`\]\((?P<link>[^)]+)\) `(?P<qualname>[^`]+)`$", re.M)


def committed() -> str:
    return COMMITTED_PAGE.read_text(encoding="utf-8") if COMMITTED_PAGE.is_file() else ""


def stale(page: str) -> str:
    """Why the committed page is stale: the first lines that differ, and the command that regenerates it."""
    diff = list(difflib.unified_diff(committed().splitlines(), page.splitlines(), "committed", "from the code",
                                     lineterm="", n=0))
    shown = "\n".join(diff[:30]) + ("\n..." if len(diff) > 30 else "")
    return (f"{COMMITTED_PAGE.relative_to(pipeline.ROOT)} no longer matches the code. Regenerate it (and the "
            f"picture) with `{pipeline.COMMAND}`, then commit both.\n{shown}")


@pytest.fixture(scope="module")
def steps():
    return pipeline.build_steps()


def test_the_committed_page_is_the_one_the_code_generates(steps):
    page = pipeline.render_page(steps)
    assert page == committed(), stale(page)


def test_every_function_the_page_names_exists_where_it_says():
    named = [m.groupdict() for m in CODE_LINE.finditer(committed())]
    assert len(named) >= 60, f"the page names only {len(named)} functions: is it the generated page?"
    problems = []
    for entry in named:
        code = pipeline.Code(entry["path"], entry["qualname"])
        if not (pipeline.ROOT / code.path).is_file():
            problems.append(f"{code.path}: no such file")
            continue
        if not (COMMITTED_PAGE.parent / entry["link"]).resolve().samefile(pipeline.ROOT / code.path):
            problems.append(f"{code.path}: the link {entry['link']} points elsewhere")
        try:
            found = pipeline.code_of(pipeline.resolve(code))
        except (ImportError, AttributeError) as exc:
            problems.append(f"{code.path} {code.qualname}: {type(exc).__name__}: {exc}")
            continue
        if found != code:
            problems.append(f"{code.path} {code.qualname}: the object lives in {found.path} as {found.qualname}")
    assert not problems, "the page names functions the code does not have:\n" + "\n".join(problems)


def test_the_steps_run_from_the_archive_to_the_drift_monitor(steps):
    assert [s.number for s in steps] == list(range(1, len(steps) + 1))
    sides = [s.side for s in steps]
    assert sides == sorted(sides, key=list(pipeline.SIDES).index), f"steps out of side order: {sides}"
    assert {s.side for s in steps if s.shared} == {"training", "serving"}, \
        "the shared normalisation must be marked on both sides"
    assert all(s.code and s.constants and s.what.endswith(".") for s in steps)


def test_both_sides_agree_on_what_the_page_checks():
    failing = [f"{what} ({detail})" for what, holds, detail in pipeline.agreements() if not holds]
    assert not failing, "training and the service disagree: " + "; ".join(failing)


def test_a_changed_constant_makes_the_committed_page_stale(monkeypatch):
    """The mean both sides normalise with, a limit of the service, the ONNX opset: each one shows on the page."""
    from common import data
    from phase3_production import onnx_export
    from phase3_production.serving import decoding

    monkeypatch.setitem(data.PUBLISHED_STATS, "cifar10", ((0.5, 0.25, 0.125), (0.2, 0.2, 0.2)))
    monkeypatch.setattr(decoding, "INLINE_PIXELS", 48 * 48)
    monkeypatch.setattr(onnx_export, "OPSET", 17)
    page = pipeline.render_page()
    assert page != committed()
    assert "| `mean (published)` | (0.5, 0.25, 0.125) |" in page
    assert "| `INLINE_PIXELS` | 2,304 |" in page and "| `OPSET` | 17 |" in page
    message = stale(page)
    assert pipeline.COMMAND in message and "(0.5, 0.25, 0.125)" in message


def test_a_renamed_function_makes_the_committed_page_stale(monkeypatch):
    from phase3_production.serving import images

    monkeypatch.setattr(images.to_model_input, "__qualname__", "to_network_input")
    page = pipeline.render_page()
    assert "`to_network_input`" in page and page != committed()


def test_the_picture_is_drawn_from_the_same_steps_and_stays_small(steps, tmp_path):
    assert COMMITTED_PICTURE.is_file(), f"{COMMITTED_PICTURE.name} is missing: run `{pipeline.COMMAND}`"
    assert COMMITTED_PICTURE.stat().st_size < 200_000
    for step in steps:
        title, where, *values = pipeline.picture_lines(step)
        assert title == f"{step.number}. {step.title}" and step.code[0].qualname in where
        assert values, f"step {step.number}'s box shows no constant"
    drawn = pipeline.draw(steps, tmp_path / pipeline.PICTURE_NAME)
    assert 20_000 < drawn.stat().st_size < 200_000
