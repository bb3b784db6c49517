"""Real programs beside Python (a browser, Prometheus): found, or the test says why not.

The switch is the real-data pattern: where ``ML60_REAL_TOOLS=1`` (what
``make test REAL_TOOLS=1`` and CI set), a missing program is a failure; on a
learner's machine without it, the test is skipped with the command that
installs it.
"""

from __future__ import annotations

import os
import shutil

import pytest

PACKAGES = {"chromium": "chromium", "chromedriver": "chromium-driver", "prometheus": "prometheus",
            "promtool": "prometheus"}


def tool(name: str) -> str:
    """The path of program ``name``; fails (``ML60_REAL_TOOLS=1``) or skips when it is not installed."""
    path = shutil.which(name)
    if path:
        return path
    how = f"`sudo apt-get install {PACKAGES.get(name, name)}`, or `make test REAL_TOOLS=1` as root"
    if os.environ.get("ML60_REAL_TOOLS") == "1":
        pytest.fail(f"{name} is not installed and ML60_REAL_TOOLS=1 asks for the real tools: {how}")
    pytest.skip(f"{name} is not installed: {how}")
