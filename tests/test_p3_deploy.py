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
    assert set(metrics["resources"].values()) >= {"Deployment", "Service", "HorizontalPodAutoscaler",
                                                  "NetworkPolicy", "Ingress"}
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


# --------------------------------------------------------------------------- network policy, token, production


def base_manifests() -> dict[str, dict]:
    return {r["kind"]: r for r in p3_deploy.load_resources().values()}


def port_number(container: dict, port) -> int:
    """A port by name or number, as the container's port number (written out here, not taken from p3_deploy)."""
    return next(p["containerPort"] for p in container["ports"] if port in (p["name"], p["containerPort"]))


def test_the_network_policy_admits_the_pods_only_on_the_service_port():
    by_kind = base_manifests()
    policy, deployment, service = by_kind["NetworkPolicy"], by_kind["Deployment"], by_kind["Service"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector and all(labels.get(k) == v for k, v in selector.items()), "the policy must select the pods"
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rules = policy["spec"]["ingress"]
    assert rules and all(rule.get("ports") for rule in rules), "a rule without ports admits every port"
    admitted = {port_number(container, p["port"]) for rule in rules for p in rule["ports"]}
    service_ports = {port_number(container, p["targetPort"]) for p in service["spec"]["ports"]}
    probe_ports = {port_number(container, container[probe]["httpGet"]["port"])
                   for probe in ("readinessProbe", "livenessProbe", "startupProbe")}
    assert admitted == service_ports == probe_ports == {8000}


def test_cross_checks_catch_a_policy_on_the_wrong_port_or_pods(tmp_path):
    k8s = copy_manifests(tmp_path)
    policy = yaml.safe_load((k8s / "networkpolicy.yaml").read_text())
    policy["spec"]["ingress"][0]["ports"][0]["port"] = 9090
    policy["spec"]["podSelector"]["matchLabels"] = {"app.kubernetes.io/name": "something-else"}
    (k8s / "networkpolicy.yaml").write_text(yaml.safe_dump(policy))
    failed = {name for name, expected, found in p3_deploy.network_policy_checks(p3_deploy.load_resources(k8s))
              if expected != found}
    assert failed == {"network policy selects the pods", "network policy admits only the service port",
                      "probes use the admitted port"}
    policy["spec"]["ingress"] = [{}]     # a rule without ports: every port
    (k8s / "networkpolicy.yaml").write_text(yaml.safe_dump(policy))
    rows = {name: found for name, _, found in p3_deploy.network_policy_checks(p3_deploy.load_resources(k8s))}
    assert rows["network policy admits only the service port"] == "every port"


def test_the_api_token_comes_from_a_generated_secret_kept_out_of_git(tmp_path):
    container = base_manifests()["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["API_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "ml60-api-token", "key": "api-token"}
    kustomization = p3_deploy.load_kustomization()
    generator = next(g for g in kustomization["secretGenerator"] if g["name"] == "ml60-api-token")
    assert generator["files"] == ["api-token=secrets/api-token"]
    ignored = (p3_deploy.K8S_DIR / "secrets" / ".gitignore").read_text().splitlines()
    assert "*" in ignored and "!.gitignore" in ignored, "the token file must never be committed"
    committed = [p for p in ROOT.joinpath("deploy").rglob("*.yaml") if "kind: Secret" in p.read_text()]
    assert committed == [], f"a Secret written into a manifest: {committed}"
    # and the cross-check notices a token written into the manifest
    k8s = copy_manifests(tmp_path)
    deployment = yaml.safe_load((k8s / "deployment.yaml").read_text())
    for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
        if e["name"] == "API_TOKEN":
            e.pop("valueFrom")
            e["value"] = "hunter2"
    (k8s / "deployment.yaml").write_text(yaml.safe_dump(deployment))
    rows = {name: found for name, _, found in p3_deploy.token_checks(p3_deploy.load_resources(k8s), kustomization)}
    assert rows["API_TOKEN comes from a Secret"] == "a plain value, in the manifest"


def test_production_runs_the_image_by_digest_not_by_a_movable_tag():
    kustomization, own = p3_deploy.load_overlay()
    entry = next(i for i in kustomization["images"] if i["name"] == "ml60-serve")
    assert "newTag" not in entry and ":" not in entry["newName"].rsplit("/", 1)[-1], "a tag can be moved"
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", entry["digest"])
    assert p3_deploy.image_pin_problem(kustomization) is None
    assert "tags can be moved" in p3_deploy.image_pin_problem({"images": [{"name": "ml60-serve", "newTag": "1.0"}]})
    rows = p3_deploy.production_checks(kustomization, own, p3_deploy.load_resources(), "ml60")
    assert [row for row in rows if row[1] != row[2]] == []


def test_pin_image_writes_the_pushed_digest_into_the_overlay(tmp_path, monkeypatch):
    overlay = tmp_path / "production"
    shutil.copytree(p3_deploy.PRODUCTION_DIR, overlay)
    digest = "sha256:" + "ab12" * 16
    fake = tmp_path / "bin" / "docker"          # stands in for `docker buildx imagetools inspect REF --format ...`
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho '{{\"mediaType\": \"application/vnd.oci.image.index.v1+json\", "
                    f"\"digest\": \"{digest}\", \"size\": 856}}'\n")
    fake.chmod(0o755)
    monkeypatch.setattr(p3_deploy, "tool", lambda name: str(fake))
    ref = "registry.example.com:5000/team/ml60-serve:1.0"
    assert p3_deploy.image_digest(ref) == digest
    p3_deploy.pin_image(ref, digest, overlay)
    text = (overlay / "kustomization.yaml").read_text()
    entry = yaml.safe_load(text)["images"][0]
    assert entry == {"name": "ml60-serve", "newName": "registry.example.com:5000/team/ml60-serve", "digest": digest}
    assert "docker buildx imagetools inspect" in text, "the overlay's comments must survive"
    with pytest.raises(ValueError, match="not a digest"):
        p3_deploy.pin_image(ref, "1.0", overlay)
