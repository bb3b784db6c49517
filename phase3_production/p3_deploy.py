"""p3-deploy (days 51-55): the service on Kubernetes, checked before any cluster sees it.

What to take from it:

1. **The manifests** in ``deploy/k8s/``: a Deployment (2 replicas, readiness
   on ``/readyz``, liveness on ``/healthz``, requests and limits, non-root,
   read-only root filesystem, a preStop pause then uvicorn's drain), a
   Service, a HorizontalPodAutoscaler (autoscaling/v2, CPU), a
   PodDisruptionBudget, a Namespace, and a kustomization that ties them.
2. **Validate offline**: ``kubernetes-validate --strict`` checks every
   resource against the Kubernetes API schema (unknown fields fail, so a
   typo such as ``readinesProbe`` cannot slip through), and ``hadolint``
   lints the Dockerfile.
3. **Check that the pieces agree**, which no schema can: the probe paths are
   routes of the app, the container port is the image's ``PORT``, the user id
   is the image's, the grace period covers preStop plus the drain, every
   resource of the kustomization exists, the HPA targets this Deployment.

Run: ``make p3-deploy``.  Writes ``runs/p3-deploy/metrics.json``.  Deploying
for real (kind, minikube, SageMaker, Vertex AI) is in ``phase3_production/README.md``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from common.script import finish_run, milestone_parser, start_run

MILESTONE = "p3-deploy"
ROOT = Path(__file__).resolve().parent.parent
K8S_DIR = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "Dockerfile"
DRAIN_SECONDS = 20          # uvicorn's timeout_graceful_shutdown in serving/__main__.py


def tool(name: str) -> str:
    """A console script installed beside this Python (the venv's bin), else on PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} is not installed; run `make install` (it comes with the project's dependencies)")
    return found


def load_resources(k8s_dir: Path = K8S_DIR) -> dict[str, dict]:
    """Every resource the kustomization lists, by file name; a missing or unparsable file is an error."""
    kustomization = yaml.safe_load((k8s_dir / "kustomization.yaml").read_text())
    resources = {}
    for name in kustomization.get("resources", []):
        path = k8s_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{k8s_dir / 'kustomization.yaml'} lists {name}, which does not exist")
        try:
            resources[name] = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML ({exc})") from exc
    return resources


def validate_schemas(files: list[Path]) -> dict:
    """``kubernetes-validate --strict`` on each file: its return code and what it said."""
    out = subprocess.run([tool("kubernetes-validate"), "--strict", *map(str, files)], capture_output=True, text=True)
    return {"ok": out.returncode == 0, "output": (out.stdout + out.stderr).strip()}


def lint_dockerfile(path: Path = DOCKERFILE) -> dict:
    out = subprocess.run([tool("hadolint"), str(path)], capture_output=True, text=True)
    return {"ok": out.returncode == 0, "output": (out.stdout + out.stderr).strip() or "no findings"}


def dockerfile_facts(path: Path = DOCKERFILE) -> dict:
    text = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
    port = re.search(r"\bPORT=(\d+)", text)
    user = re.search(r"^USER\s+(\d+)", text, re.MULTILINE)
    return {"port": int(port.group(1)) if port else None, "uid": int(user.group(1)) if user else None,
            "healthcheck": "HEALTHCHECK" in text, "stages": len(re.findall(r"^FROM\s", text, re.MULTILINE))}


def consistency(resources: dict[str, dict], facts: dict, routes: set[str]) -> list[dict]:
    """Checks that span files: each a name, what was expected, what was found, ok."""
    by_kind = {r["kind"]: r for r in resources.values()}
    deployment, service, hpa = by_kind["Deployment"], by_kind["Service"], by_kind["HorizontalPodAutoscaler"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == "http")
    security = container.get("securityContext", {})
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pause = float(re.search(r"sleep\((\d+(?:\.\d+)?)\)", " ".join(pre_stop)).group(1)) if pre_stop else 0.0
    checks = [
        ("two replicas", 2, deployment["spec"]["replicas"]),
        ("readiness probe is a route", "/readyz", container["readinessProbe"]["httpGet"]["path"]),
        ("liveness probe is a route", "/healthz", container["livenessProbe"]["httpGet"]["path"]),
        ("container port = the image's PORT", facts["port"], port),
        ("PORT env = container port", str(port), env.get("PORT")),
        ("runs as the image's non-root user", facts["uid"], pod["securityContext"].get("runAsUser")),
        ("read-only root filesystem", True, security.get("readOnlyRootFilesystem")),
        ("no privilege escalation", False, security.get("allowPrivilegeEscalation")),
        ("requests and limits set", True, bool(container["resources"].get("requests"))
         and bool(container["resources"].get("limits"))),
        ("grace period covers preStop + drain", True,
         pod["terminationGracePeriodSeconds"] >= pause + DRAIN_SECONDS),
        ("service selects the pods", deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"],
         service["spec"]["selector"]["app.kubernetes.io/name"]),
        ("HPA targets the deployment", deployment["metadata"]["name"], hpa["spec"]["scaleTargetRef"]["name"]),
        ("HPA minimum >= replicas", True, hpa["spec"]["minReplicas"] >= deployment["spec"]["replicas"]),
    ]
    out = [{"check": name, "expected": expected, "found": found, "ok": expected == found}
           for name, expected, found in checks]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if probe in container:
            path = container[probe]["httpGet"]["path"]
            out.append({"check": f"{probe} path exists in the app", "expected": True, "found": path in routes,
                        "ok": path in routes})
    return out


def app_routes() -> set[str]:
    from phase3_production.serving.app import create_app
    from phase3_production.serving.config import Settings

    app = create_app(Settings())          # building the app loads nothing; the model loads at startup
    return {getattr(r, "path", "") for r in app.routes}


def main(argv: list[str] | None = None) -> dict:
    parser = milestone_parser(MILESTONE, __doc__)
    parser.add_argument("--k8s-dir", default=str(K8S_DIR))
    args = parser.parse_args(argv)
    run_dir = start_run(MILESTONE, args)
    print(__doc__.split("\n\n")[0])
    k8s_dir = Path(args.k8s_dir)

    print(f"\n-- 1. The resources of {k8s_dir / 'kustomization.yaml'} --")
    resources = load_resources(k8s_dir)
    for name, r in resources.items():
        print(f"  {name:<18} {r['apiVersion']:<24} {r['kind']}")

    print("\n-- 2. kubernetes-validate --strict (Kubernetes API schemas, unknown fields fail) --")
    schemas = validate_schemas([k8s_dir / name for name in resources])
    print("  " + schemas["output"].replace("\n", "\n  "))

    print("\n-- 3. hadolint Dockerfile --")
    lint = lint_dockerfile()
    print(f"  {lint['output']}")

    print("\n-- 4. Do the manifests, the image and the app agree? --")
    facts = dockerfile_facts()
    checks = consistency(resources, facts, app_routes())
    for c in checks:
        print(f"  {'ok ' if c['ok'] else 'BAD'} {c['check']:<40} expected {c['expected']!s:<16} found {c['found']}")
    passed = sum(c["ok"] for c in checks)
    ok = schemas["ok"] and lint["ok"] and passed == len(checks)
    print(f"\nResult: {'all checks pass' if ok else 'PROBLEMS above'}: {len(resources)} resources valid "
          f"({'yes' if schemas['ok'] else 'NO'}), Dockerfile lint {'clean' if lint['ok'] else 'FAILED'}, "
          f"{passed}/{len(checks)} cross-checks. Deploy: kubectl apply -k {k8s_dir.relative_to(ROOT)}")
    return finish_run(run_dir, MILESTONE, args,
                      key_figure={"name": "deploy_checks_passed", "value": passed,
                                  "display": f"{len(resources)} manifests valid, Dockerfile lint clean, "
                                             f"{passed}/{len(checks)} cross-checks" if ok else "PROBLEMS"},
                      resources={n: r["kind"] for n, r in resources.items()}, schema_validation=schemas,
                      dockerfile_lint=lint, dockerfile=facts, cross_checks=checks)


def check(metrics: dict) -> list[str]:
    problems = []
    if not metrics.get("schema_validation", {}).get("ok"):
        problems.append("kubernetes-validate --strict failed")
    if not metrics.get("dockerfile_lint", {}).get("ok"):
        problems.append("hadolint found problems in the Dockerfile")
    bad = [c["check"] for c in metrics.get("cross_checks", []) if not c["ok"]]
    if bad or not metrics.get("cross_checks"):
        problems.append(f"cross-checks failed: {', '.join(bad) or 'none ran'}")
    return problems


if __name__ == "__main__":
    main()
