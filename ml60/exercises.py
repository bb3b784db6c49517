"""Exercise blocks: find them in the source, turn them into stubs, bring the reference back.

An exercise is the body of one small function, fenced in the reference code::

    def softmax_cross_entropy(logits, y):
        \"\"\"...\"\"\"
        # EXERCISE p1-numpy.1: softmax cross-entropy and its gradient
        # hint: subtract each row's maximum before exp; the gradient is (softmax - onehot) / N
        n = len(y)
        ...
        return loss, grad / n
        # END EXERCISE

The header (the ``EXERCISE`` line, then any ``# hint:`` lines, and a
``# guide:`` line where the explanation is not at ``<phase>/README.md#<id>``)
and the ``END EXERCISE`` line are never touched.  Everything between them is
the *body*: the reference answer in a fresh clone, a stub after
``make exercise``, the learner's own code after that.  A Python stub is one
line that raises ``NotImplementedError`` naming the exercise, so a run that
reaches unwritten code stops with the exercise to solve.

Nothing is ever lost.  The reference bodies are recorded under ``.ml60/``
the first time a milestone is turned into exercises (falling back to git's
``HEAD`` for a block that was never recorded), and any body of the learner's
that is about to be replaced is first copied, whole file, to
``.ml60/backup/<time>/``.

Standard library only, like the rest of ``ml60``'s front end.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import functools
import json
import re
import shutil
# bandit B404: the reference is read from git with a fixed argv, never through a shell
import subprocess  # nosec B404
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATE_DIR_NAME = ".ml60"
# Where exercises may live: the phase packages.  ``common/`` is shared machinery and never holds one.
SOURCE_GLOBS = ("phase1_foundation/**/*.py", "phase2_depth/**/*.py", "phase3_production/**/*.py")

START_RE = re.compile(r"^(?P<indent>[ \t]*)# EXERCISE (?P<id>(?P<milestone>p\d-[a-z]+)\.(?P<number>\d+)): (?P<title>.+?)\s*$")
HINT_RE = re.compile(r"^[ \t]*# hint: (?P<text>.+?)\s*$")
GUIDE_RE = re.compile(r"^[ \t]*# guide: (?P<text>\S+)\s*$")
END_RE = re.compile(r"^[ \t]*# END EXERCISE\s*$")
DEF_RE = re.compile(r"^(?P<indent>[ \t]*)(?:async\s+)?def (?P<name>\w+)\s*\(")
CLASS_RE = re.compile(r"^(?P<indent>[ \t]*)class (?P<name>\w+)\b")


class ExerciseError(Exception):
    """A malformed block, an unknown id, or a state that would lose work: the message says which."""


@dataclass
class Exercise:
    """One fenced block, as it stands in the file now."""

    id: str                 # "p1-numpy.1"
    milestone: str          # "p1-numpy"
    number: int
    title: str
    hint: str
    guide: str              # "phase1_foundation/README.md#day-2"
    path: Path              # relative to the project root
    indent: str
    body_start: int         # index of the first body line (0-based, in the file's lines)
    body_end: int           # index of the END EXERCISE line
    body: str               # the lines between header and END, joined with newlines
    function: str = ""      # "softmax_cross_entropy", or "MnistDataset.__getitem__" for a method
    root: Path = ROOT       # the project the block was read from (a scratch copy in the proofs)

    @property
    def module(self) -> str:
        """The dotted module the block lives in: ``phase1_foundation.numpy_net``."""
        return ".".join(self.path.with_suffix("").parts)

    @property
    def location(self) -> str:
        where = f"{self.path}:{self.body_start + 1}"
        return f"{where} ({self.function})" if self.function else where

    def stub(self) -> str:
        return stub_body(self)

    @property
    def is_stub(self) -> bool:
        """One ``raise NotImplementedError("<this id> ...")`` line: a stub, whatever its hint says today."""
        lines = [line.strip() for line in self.body.splitlines() if line.strip()]
        return len(lines) == 1 and re.match(rf"raise NotImplementedError\(['\"]{re.escape(self.id)} ", lines[0]) is not None

    @property
    def state(self) -> str:
        """"stub", "reference" or "edited" (the learner's own lines, or anything else)."""
        if self.is_stub:
            return "stub"
        reference = reference_body(self, self.root)
        if reference is not None and _same_code(self.body, reference):
            return "reference"
        return "edited"


def stub_message(ex: Exercise) -> str:
    """What the stub raises: the exercise, its hint, where the guide explains it, what to run next."""
    where = f" Read {ex.guide} first." if ex.guide else ""
    hint = f" Hint: {ex.hint.rstrip('.')}." if ex.hint else ""
    return f"{ex.id} ({ex.title}) is yours to write.{hint}{where} Then: make check M={ex.milestone}"


def stub_body(ex: Exercise) -> str:
    """What ``make exercise`` leaves between the header and END: one line that says what to do."""
    return f"{ex.indent}raise NotImplementedError({stub_message(ex)!r})"


def _same_code(a: str, b: str) -> bool:
    return [line.rstrip() for line in a.strip("\n").splitlines()] == [line.rstrip() for line in b.strip("\n").splitlines()]


# --------------------------------------------------------------------------- finding blocks


def source_files(root: Path = ROOT) -> list[Path]:
    seen: dict[Path, None] = {}
    for pattern in SOURCE_GLOBS:
        for path in sorted(root.glob(pattern)):
            if path.is_file() and ".venv" not in path.parts:
                seen.setdefault(path, None)
    return list(seen)


def parse_file(path: Path, root: Path = ROOT) -> list[Exercise]:
    """Every block in one file, in order; a block without its END line is an error."""
    return parse_text(path.read_text(encoding="utf-8"), path.resolve().relative_to(root.resolve()), root)


def parse_text(text: str, relative: Path, root: Path = ROOT) -> list[Exercise]:
    """The blocks of one file's text; ``relative`` is its path from the project root."""
    path, lines = relative, text.splitlines()
    found, i = [], 0
    while i < len(lines):
        start = START_RE.match(lines[i])
        if END_RE.match(lines[i]):
            raise ExerciseError(f"{path}:{i + 1}: END EXERCISE without an EXERCISE line above it")
        if not start:
            i += 1
            continue
        header_end, hint, guide = i + 1, "", ""
        while header_end < len(lines):
            if (m := HINT_RE.match(lines[header_end])):
                hint = (hint + " " + m["text"]).strip()
            elif (m := GUIDE_RE.match(lines[header_end])):
                guide = m["text"]
            else:
                break
            header_end += 1
        end = header_end
        while end < len(lines) and not END_RE.match(lines[end]):
            if START_RE.match(lines[end]):
                raise ExerciseError(f"{path}:{end + 1}: EXERCISE {start['id']} (line {i + 1}) has no END EXERCISE "
                                    "before the next block starts")
            end += 1
        if end == len(lines):
            raise ExerciseError(f"{path}:{i + 1}: EXERCISE {start['id']} has no END EXERCISE line")
        found.append(Exercise(
            id=start["id"], milestone=start["milestone"], number=int(start["number"]), title=start["title"],
            hint=hint, guide=guide or _default_guide(relative, start["id"]), path=relative, indent=start["indent"], body_start=header_end, body_end=end,
            body="\n".join(lines[header_end:end]), function=_enclosing_function(lines, i),
            root=root))
        i = end + 1
    return found


def _default_guide(relative: Path, exercise_id: str) -> str:
    """The phase guide beside the code, at the exercise's anchor: ``phase1_foundation/README.md#p1-numpy.3``."""
    return f"{relative.parts[0]}/README.md#{exercise_id}"


def _enclosing_function(lines: list[str], index: int) -> str:
    """The name of the def around line ``index`` ("Class.method" for a method)."""
    block_indent = len(lines[index]) - len(lines[index].lstrip())
    function, function_indent = "", None
    for j in range(index - 1, -1, -1):
        line = lines[j]
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if function_indent is None:
            if (m := DEF_RE.match(line)) and indent < block_indent:
                function, function_indent = m["name"], indent
        elif (m := CLASS_RE.match(line)) and indent < function_indent:
            return f"{m['name']}.{function}"
        elif indent == 0:
            break
    return function


def all_exercises(root: Path = ROOT) -> list[Exercise]:
    """Every block in the project, ordered by milestone (course order), then number."""
    from ml60.milestones import MILESTONES

    order = {m.id: i for i, m in enumerate(MILESTONES)}
    found = [ex for path in source_files(root) for ex in parse_file(path, root)]
    seen: dict[str, Exercise] = {}
    for ex in found:
        if ex.milestone not in order:
            raise ExerciseError(f"{ex.location}: {ex.id} names no milestone; the milestones are: {', '.join(order)}")
        if not ex.function:
            raise ExerciseError(f"{ex.location}: {ex.id} is not inside a function; an exercise is a function's body")
        if ex.id in seen:
            raise ExerciseError(f"exercise {ex.id} appears twice: {seen[ex.id].location} and {ex.location}")
        seen[ex.id] = ex
    return sorted(found, key=lambda ex: (order[ex.milestone], ex.number))


def select(selector: str, root: Path = ROOT) -> list[Exercise]:
    """``p1-numpy`` (a whole milestone), ``p1-numpy.2`` (one exercise) or ``all``."""
    exercises = all_exercises(root)
    if selector in ("", "all"):
        return exercises
    chosen = [ex for ex in exercises if selector in (ex.id, ex.milestone)]
    if not chosen:
        from ml60.milestones import MILESTONES

        if selector in {m.id for m in MILESTONES}:
            raise ExerciseError(f"milestone {selector} has no exercise blocks yet")
        ids = ", ".join(sorted({ex.milestone for ex in exercises}))
        raise ExerciseError(f"no exercise {selector!r}: name a milestone ({ids}) or one exercise (e.g. p1-numpy.1)")
    return chosen


# --------------------------------------------------------------------------- the reference store


def state_dir(root: Path = ROOT) -> Path:
    return root / STATE_DIR_NAME


def _reference_file(root: Path) -> Path:
    return state_dir(root) / "reference.json"


def _load_references(root: Path = ROOT) -> dict[str, dict]:
    path = _reference_file(root)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ExerciseError(f"{path} is damaged ({exc}); move it away and run `make solution` again "
                            "(the reference then comes from git)") from exc


def _save_references(references: dict[str, dict], root: Path = ROOT) -> None:
    path = _reference_file(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(references, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def reference_body(ex: Exercise, root: Path = ROOT) -> str | None:
    """The reference answer: recorded under .ml60/, else from git's HEAD when HEAD holds it (not a stub)."""
    recorded = _load_references(root).get(ex.id)
    if recorded is not None:
        return recorded["body"]
    return _git_reference(ex, root)


def _git_reference(ex: Exercise, root: Path) -> str | None:
    block = _git_head_blocks(ex.path.as_posix(), str(root)).get(ex.id)
    if block is None or block.is_stub:
        return None
    return block.body


@functools.lru_cache(maxsize=None)
def _git_head_blocks(relative: str, root: str) -> dict[str, Exercise]:
    """The blocks of one file as git's HEAD has it (empty without git, or when HEAD lacks the file)."""
    try:
        # bandit B603 B607: a fixed git argv and a tracked file's path; no shell
        text = subprocess.run(["git", "show", f"HEAD:{relative}"], cwd=root, capture_output=True,  # nosec B603 B607
                              text=True, check=True).stdout
        return {ex.id: ex for ex in parse_text(text, Path(relative))}
    except (OSError, subprocess.CalledProcessError, ExerciseError):
        return {}


def record_references(exercises: list[Exercise], root: Path = ROOT) -> None:
    """Remember the bodies that are the reference now (a fresh clone's), before anything is stubbed."""
    references = _load_references(root)
    changed = False
    for ex in exercises:
        if ex.id in references:
            continue
        body = _git_reference(ex, root)
        if body is None and not ex.is_stub:
            body = ex.body   # no git: the tree as shipped is the reference
        if body is not None:
            references[ex.id] = {"path": ex.path.as_posix(), "body": body}
            changed = True
    if changed:
        _save_references(references, root)


# --------------------------------------------------------------------------- rewriting files


def backup(paths: list[Path], root: Path = ROOT) -> Path:
    """Copy whole files to .ml60/backup/<UTC time>/ and return that folder."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    folder = state_dir(root) / "backup" / stamp
    for path in paths:
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / path, target)
    return folder


def replace_bodies(new_bodies: dict[str, str], root: Path = ROOT) -> list[Path]:
    """Write ``{exercise id: body}`` into the files; returns the files changed."""
    by_file: dict[Path, list[Exercise]] = {}
    for ex in all_exercises(root):
        if ex.id in new_bodies:
            by_file.setdefault(ex.path, []).append(ex)
    changed = []
    for path, blocks in by_file.items():
        lines = (root / path).read_text(encoding="utf-8").splitlines()
        for ex in sorted(blocks, key=lambda e: e.body_start, reverse=True):   # bottom up: indices stay valid
            lines[ex.body_start:ex.body_end] = new_bodies[ex.id].split("\n") if new_bodies[ex.id] else []
        text = "\n".join(lines) + "\n"
        if text != (root / path).read_text(encoding="utf-8"):
            tmp = (root / path).with_name(f".{path.name}.ml60.tmp")
            tmp.write_text(text, encoding="utf-8")
            shutil.copymode(root / path, tmp)
            tmp.replace(root / path)
            changed.append(path)
    return changed


@dataclass
class Outcome:
    """What a command did, block by block, for the one-line-per-exercise report."""

    lines: list[tuple[str, str]] = field(default_factory=list)
    backup: Path | None = None


def make_stubs(selector: str, *, force: bool = False, root: Path = ROOT) -> Outcome:
    """``make exercise``: reference bodies become stubs; the learner's own bodies stay unless ``force``."""
    chosen = select(selector, root)
    record_references(all_exercises(root), root)   # every block, while the tree is as shipped
    outcome, bodies, to_back_up = Outcome(), {}, set()
    for ex in chosen:
        state = ex.state
        if state == "stub":
            outcome.lines.append((ex.id, "already a stub"))
        elif state == "edited" and not force:
            outcome.lines.append((ex.id, "kept your version (FORCE=1 stubs it, after a backup)"))
        else:
            if state == "edited":
                to_back_up.add(ex.path)
            bodies[ex.id] = ex.stub()
            outcome.lines.append((ex.id, "stubbed"))
    if to_back_up:
        outcome.backup = backup(sorted(to_back_up), root)
    replace_bodies(bodies, root)
    # A stub is shorter than its answer, so every block below it in the same file moves up: the places
    # printed are read from the files as they are now, not as they were.
    now = {ex.id: ex.location for ex in select(selector, root)}
    outcome.lines = [(ex_id, f"stubbed: {now[ex_id]}" if text == "stubbed" else text) for ex_id, text in outcome.lines]
    return outcome


def edited(selector: str, root: Path = ROOT) -> list[Exercise]:
    """The blocks that hold the learner's own code (what ``make solution`` would replace)."""
    return [ex for ex in select(selector, root) if ex.state == "edited"]


def restore(selector: str, root: Path = ROOT) -> Outcome:
    """``make solution``: every block back to the reference, the learner's own bodies backed up first."""
    chosen = select(selector, root)
    outcome, bodies, to_back_up = Outcome(), {}, set()
    for ex in chosen:
        reference = reference_body(ex, root)
        if reference is None:
            raise ExerciseError(f"no reference recorded for {ex.id}: .ml60/reference.json lacks it and git's HEAD "
                                f"holds no answer for it either (try `git show <first commit>:{ex.path}`)")
        state = ex.state
        if state == "reference":
            outcome.lines.append((ex.id, "already the reference"))
            continue
        if state == "edited":
            to_back_up.add(ex.path)
        bodies[ex.id] = reference
        outcome.lines.append((ex.id, "reference restored" + (" (your version is in the backup)" if state == "edited" else "")))
    if to_back_up:
        outcome.backup = backup(sorted(to_back_up), root)
    replace_bodies(bodies, root)
    return outcome


def diff(selector: str, root: Path = ROOT) -> str:
    """The learner's blocks against the reference, as a unified diff (empty when they match)."""
    chunks = []
    for ex in select(selector, root):
        reference = reference_body(ex, root)
        if reference is None:
            chunks.append(f"# {ex.id}: no reference recorded\n")
            continue
        if _same_code(ex.body, reference):
            continue
        if ex.is_stub:
            chunks.append(f"# {ex.id} ({ex.title}): not started, still the stub in {ex.location}\n")
            continue
        label = f"{ex.path} {ex.id} ({ex.title})"
        chunks.append("".join(difflib.unified_diff(
            (reference + "\n").splitlines(keepends=True), (ex.body + "\n").splitlines(keepends=True),
            fromfile=f"reference: {label}", tofile=f"yours: {label}")))
    return "\n".join(chunks)
