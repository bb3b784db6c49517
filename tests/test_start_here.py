"""The README's "Start here", typed in order on a scratch clone, as a new learner would type it.

Each command of the README's first code block runs, in its order, in a fresh ``git clone`` of this
checkout; the comment line that says "write it" is where the learner writes the exercise, and the test
writes an answer of its own there (not the reference: a different loop order). Every command must exit 0.
Before writing, ``make check`` must say "not started" and explain make's own error line.

What the scratch clone is spared: downloading the wheels again. Its ``.venv`` is a new virtual
environment whose site-packages point at this environment's (one ``.pth`` line), so ``make install`` runs
its real ``pip install -e .``, which finds every dependency satisfied and installs only the clone itself.
The MNIST files are put in ``./data/MNIST/raw/`` as the README's Data section says (links to the real ones).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.real_data]

# The learner's own day-1 answer: the same sum, with the loops in another order (i, k, j).
LEARNER_ANSWER = """\
    rows, inner = a.shape
    cols = b.shape[1]
    out = np.zeros((rows, cols))
    for i in range(rows):
        for k in range(inner):
            for j in range(cols):
                out[i, j] += a[i, k] * b[k, j]
    return out
"""


def start_here_lines(readme: str) -> list[str]:
    """The lines of the first code block under "Start here", comments kept (they say what to do)."""
    section = readme.split("## Start here", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the README's Start here section has no bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def scratch_clone(tmp_path: Path) -> Path:
    clone = tmp_path / "ml60"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    # The working tree as it is now (a test of uncommitted edits must see them too).
    changed = subprocess.run(["git", "ls-files", "-m", "-o", "--exclude-standard"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    for name in changed:
        source = ROOT / name
        if source.is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            (clone / name).write_bytes(source.read_bytes())
    subprocess.run([sys.executable, "-m", "venv", str(clone / ".venv")], check=True)
    here = Path(sysconfig.get_paths()["purelib"])
    there = Path(subprocess.run([str(clone / ".venv" / "bin" / "python"), "-c",
                                 "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                capture_output=True, text=True, check=True).stdout.strip())
    (there / "ml60-shared-site-packages.pth").write_text(f"{here}\n")
    return clone


def learner_env(tmp_path: Path) -> dict:
    """A shell as a learner has it: no data folder named, no test settings; a cache of the clone's own."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ML60_", "PYTEST", "MAKE")) and k not in ("DATA_DIR", "QUICK", "MFLAGS", "PYTHONPATH")}
    env["ML60_CACHE_DIR"] = str(tmp_path / "cache")
    env["ML60_OFFLINE"] = "1"          # the files are in ./data; nothing is to be fetched
    return env


def test_start_here_typed_in_order_on_a_fresh_clone(tmp_path, real_data_dir):
    mnist = real_data_dir / "MNIST" / "raw"
    files = sorted(mnist.glob("*-ubyte*"))
    assert len(files) >= 4, f"the real MNIST files are not in {mnist}"
    clone, env = scratch_clone(tmp_path), learner_env(tmp_path)
    raw = clone / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for path in files:
        (raw / path.name).symlink_to(path)

    def run(command: str) -> subprocess.CompletedProcess:
        return subprocess.run(command, shell=True, cwd=clone, env=env, capture_output=True, text=True, timeout=900)

    lines = start_here_lines((clone / "README.md").read_text(encoding="utf-8"))
    typed, wrote = [], False
    for line in lines:
        command = line.split("  #", 1)[0].strip()
        if line.lstrip().startswith("#"):
            if "write it" in line:
                stub = clone / "phase1_foundation" / "p1_numpy.py"
                text = stub.read_text()
                assert "NotImplementedError('p1-numpy.1 " in text or 'NotImplementedError("p1-numpy.1 ' in text
                before = run("make check M=p1-numpy.1")
                assert before.returncode != 0 and "not started" in before.stdout, before.stdout + before.stderr
                assert "Error 1' line below means only that" in before.stdout, before.stdout
                body = re.compile(r"(# hint:[^\n]*\n)(\s*raise NotImplementedError\([^\n]*\)\n)")
                stub.write_text(body.sub(lambda m: m.group(1) + LEARNER_ANSWER, text, count=1))
                wrote = True
            continue
        out = run(command)
        typed.append(command)
        assert out.returncode == 0, f"`{command}` failed (exit {out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        if command.startswith("make check"):
            assert "1/1 solved." in out.stdout, out.stdout
        if command == "make p1-numpy":
            assert "real MNIST" in out.stdout or "MNIST" in out.stdout, out.stdout[-2000:]
            assert (clone / "runs" / "p1-numpy" / "metrics.json").is_file()
        if command == "make progress":
            row = next(r for r in out.stdout.splitlines() if r.startswith("p1-numpy "))
            assert "full run" in row and row.rstrip().endswith("PASS"), row
            assert re.search(r"\b5/5\b", row), row
    assert wrote, "the Start here block never says where to write the exercise"
    assert typed[:2] == ["make install", "make exercise M=p1-numpy.1"] and "make p1-numpy" in typed, typed
