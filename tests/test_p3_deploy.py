"""p3-deploy: manifests valid against the Kubernetes schemas (strictly), a clean Dockerfile, and pieces that agree."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from phase3_production import p3_deploy, p3_serve

pytestmark = getattr(pytest.mark, "p3-deploy")
ROOT = Path(__file__).resolve().parent.parent


def test_milestone_validates_lints_and_cross_checks(tmp_path, monkeypatch):
    monkeypatch.setenv("ML60_RUNS_DIR", str(tmp_path))
    metrics = p3_deploy.main([])
    assert p3_deploy.check(metrics) == []
    assert set(metrics["resources"].values()) >= {"Deployment", "Service", "HorizontalPodAutoscaler"}
    assert "passed" in metrics["schema_validation"]["output"]


def copy_manifests(tmp_path: Path) -> Path:
    target = tmp_path / "k8s"
    shutil.copytree(p3_deploy.K8S_DIR, target)
    return target


def test_a_misspelt_field_fails_strict_validation(tmp_path):
    k8s = copy_manifests(tmp_path)
    text = (k8s / "deployment.yaml").read_text().replace("readinessProbe:", "readinesProbe:")
    (k8s / "deployment.yaml").write_text(text)
    result = p3_deploy.validate_schemas([k8s / "deployment.yaml"])
    assert not result["ok"] and "readinesProbe" in result["output"]


def test_cross_checks_catch_what_no_schema_can(tmp_path):
    k8s = copy_manifests(tmp_path)
    deployment = yaml.safe_load((k8s / "deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["httpGet"]["path"] = "/ready"          # not a route of the app
    container["ports"][0]["containerPort"] = 9000                       # not the image's PORT
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 10   # shorter than the drain
    (k8s / "deployment.yaml").write_text(yaml.safe_dump(deployment))
    checks = p3_deploy.consistency(p3_deploy.load_resources(k8s), p3_deploy.dockerfile_facts(),
                                   p3_deploy.app_routes())
    failed = {c["check"] for c in checks if not c["ok"]}
    assert {"readiness probe is a route", "container port = the image's PORT",
            "grace period covers preStop + drain", "readinessProbe path exists in the app"} <= failed


def test_a_kustomization_listing_a_missing_file_is_a_clear_error(tmp_path):
    k8s = copy_manifests(tmp_path)
    (k8s / "hpa.yaml").unlink()
    with pytest.raises(FileNotFoundError, match="lists hpa.yaml, which does not exist"):
        p3_deploy.load_resources(k8s)


def test_dockerfile_is_multistage_non_root_healthchecked_and_runs_the_tested_command():
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM python:3\.\d+-slim", text, re.MULTILINE)) == 2
    assert re.search(r"^USER 10001$", text, re.MULTILINE) and "HEALTHCHECK" in text
    entrypoint = re.search(r"^ENTRYPOINT (\[.*\])$", text, re.MULTILINE).group(1)
    assert yaml.safe_load(entrypoint) == p3_serve.SERVE_COMMAND   # the self-test runs exactly this
    lines = (ROOT / "phase3_production" / "serving" / "requirements.txt").read_text().lower().splitlines()
    packages = {re.split(r"[<>=]", line)[0].strip() for line in lines if line.strip() and not line.startswith("#")}
    assert packages == {"onnxruntime", "numpy", "pillow", "fastapi", "uvicorn", "prometheus-client",
                        "python-multipart"}
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert {".venv", ".git", "data", "runs/*", "!runs/p3-onnx/model.onnx"} <= set(ignored)


def test_hadolint_flags_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install fastapi\nCMD python app.py\n")
    result = p3_deploy.lint_dockerfile(bad)
    assert not result["ok"] and "DL3007" in result["output"]   # 'latest' tag
