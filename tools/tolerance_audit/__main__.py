"""Run the tolerance audit: ``python -m tools.tolerance_audit [--configs t1,t2,t4,t2det] [pytest args]``.

Each configuration runs the chosen tests once, in one process (no workers:
the thread count is then exactly the one asked for), on a spliced copy of the
tree (see :mod:`.splice`):

* ``tN``: ``OMP_NUM_THREADS=N`` (the test session sets torch to N threads, and
  every process it starts inherits it);
* ``tNdet``: the same with ``torch.use_deterministic_algorithms(True)``.

The real-data tests run where ``ML60_DATA_DIR`` is set (``make audit-tolerances DATA_DIR=...``).
By default every test runs except the stub proofs (they only re-run milestones
whose checks the other tests already reach) and the scratch-clone test of the
README's "Start here" (it clones the tree with git, and the spliced copy is not
a repository; it holds no tolerance).  Writes the table to ``--out`` and the
raw records beside it; each configuration's pytest output is kept with its
records (``<config>.log``), so a failure can be read afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tools.tolerance_audit import report, splice

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TESTS = ["tests", "--ignore=tests/test_exercise_stubs.py", "--ignore=tests/test_exercise_stubs_phase2.py",
                 "--ignore=tests/test_exercise_stubs_phase3.py", "--ignore=tests/test_start_here.py"]


def parse_config(name: str) -> tuple[int, bool]:
    deterministic = name.endswith("det")
    return int(name.removeprefix("t").removesuffix("det")), deterministic


def run_config(tree: Path, config: str, records: Path, pytest_args: list[str]) -> dict:
    threads, deterministic = parse_config(config)
    out = records / config
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TOLPROBE_OUT": str(out),
           "TOLPROBE_DETERMINISTIC": "1" if deterministic else "0", "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    print(f"[audit] {config}: pytest {' '.join(pytest_args)}", flush=True)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "tests._tolprobe",
                           "-p", "no:cacheprovider", *pytest_args], cwd=tree, env=env, capture_output=True, text=True)
    log = records / f"{config}.log"
    log.write_text(done.stdout + done.stderr)
    summary = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    failed = [line for line in done.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    print(f"[audit] {config}: {summary} ({time.perf_counter() - start:.0f} s)", flush=True)
    return {"config": config, "exit": done.returncode, "summary": summary, "failed": failed,
            "log": str(log),
            "seconds": round(time.perf_counter() - start)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="t1,t2,t4,t2det")
    parser.add_argument("--jobs", type=int, default=1, help="configurations run side by side (values do not depend "
                        "on load, only on threads; timing tests may fail under it and are reported)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "tolerance-audit" / "tolerances.md")
    args, pytest_args = parser.parse_known_args(argv)
    configs = args.configs.split(",")
    work = Path(tempfile.mkdtemp(prefix="tolerance-audit-"))
    tree, records = work / "tree", work / "records"
    sites = splice.splice_tree(ROOT, tree)
    print(f"[audit] {len(sites)} tolerance sites spliced into {tree}", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda c: run_config(tree, c, records, pytest_args or DEFAULT_TESTS), configs))
    table = report.rows(splice.as_dicts(sites), {c: report.load(records / c) for c in configs})
    flagged = [r for r in table if r["flag"]]
    header = "\n".join([f"Sites: {len(sites)}; under a {report.ENOUGH:g}x margin: {len(flagged)}.",
                        *(f"- {r['config']}: {r['summary']} ({r['seconds']} s)" for r in runs), "", ""])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report.markdown(table, configs, header))
    args.out.with_suffix(".json").write_text(json.dumps({"runs": runs, "rows": table}, indent=1, default=str))
    print(f"[audit] the table: {args.out}; {len(flagged)} sites under {report.ENOUGH:g}x", flush=True)
    for row in flagged:
        print(f"  {row['site']}: {row['margin']:.3g}x  {row['text'][:100]}")
    return 1 if flagged else 0


if __name__ == "__main__":
    sys.exit(main())
