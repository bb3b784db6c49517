"""The sixty days, read from the phase guides: ``python -m ml60 days`` prints the course's table.

Each day has one entry in its phase's guide, marked for links and for this
module::

    <a id="day-7"></a>
    ### Day 7: why zero_grad matters

followed by what to read, what to write (the exercises), what to run, what
to expect and a question with its answer.  The top README's table of the
sixty days is this module's output (``tests/test_docs.py`` holds the two
together), so a day renamed in its guide cannot leave a stale line behind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUIDES = {1: Path("phase1_foundation/README.md"), 2: Path("phase2_depth/README.md"),
          3: Path("phase3_production/README.md")}
DAY_RE = re.compile(r'^<a id="day-(?P<day>\d+)"></a>\s*\n### Day (?P=day): (?P<title>.+?)\s*$', re.M)
EXERCISE_LINK_RE = re.compile(r"\[(p\d-[a-z]+\.\d+)\]\(#\1\)")


@dataclass(frozen=True)
class Day:
    day: int
    title: str
    guide: Path             # relative to the repository root
    text: str               # the entry, from its anchor to the next day's (or the next "## " block)

    @property
    def phase(self) -> int:
        return (self.day - 1) // 20 + 1

    @property
    def link(self) -> str:
        return f"{self.guide.as_posix()}#day-{self.day}"

    @property
    def exercises(self) -> list[str]:
        return EXERCISE_LINK_RE.findall(self.text)


def read_days(root: Path = ROOT) -> list[Day]:
    """Every day entry of the three guides, in the order they appear."""
    days = []
    for guide in GUIDES.values():
        text = (root / guide).read_text(encoding="utf-8")
        matches = list(DAY_RE.finditer(text))
        for i, match in enumerate(matches):
            end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
            block_end = text.find("\n## ", match.end())
            if 0 <= block_end < end:
                end = block_end
            days.append(Day(int(match["day"]), match["title"], guide, text[match.start():end]))
    return days


def milestone_of(day: int) -> str:
    from ml60.milestones import MILESTONES

    for m in MILESTONES:
        first, last = (int(x) for x in m.days.split("-"))
        if first <= day <= last:
            return m.id
    raise KeyError(f"no milestone covers day {day}")


def table(root: Path = ROOT) -> str:
    """The README's table: one row per day, its milestone, its title linked to its entry, its exercises."""
    rows = ["| day | milestone | what you do | exercises |", "|---:|---|---|---|"]
    for d in sorted(read_days(root), key=lambda d: d.day):
        exercises = ", ".join(d.exercises) or "-"
        rows.append(f"| {d.day} | `{milestone_of(d.day)}` | [{d.title}]({d.link}) | {exercises} |")
    return "\n".join(rows)


def main() -> int:
    print(table())
    return 0
