"""p3-deploy (days 51-55): the service on Kubernetes, checked before any cluster sees it.

What to take from it:

1. **The manifests** in ``deploy/k8s/``: a Deployment (2 replicas, readiness
   on ``/readyz``, liveness on ``/healthz``, requests and limits, non-root,
   read-only root filesystem, a preStop pause then uvicorn's drain, the API
   token from a Secret), a Service, a HorizontalPodAutoscaler
   (autoscaling/v2, CPU), a PodDisruptionBudget, a NetworkPolicy (connections
   to the pods on the service's port only), a Namespace, and a kustomization
   that ties them and generates the token's Secret from a file kept out of
   git.  ``deploy/overlays/production/`` adds an Ingress and pins the image
   by digest.
2. **Validate offline**: ``kubernetes-validate --strict`` checks every
   resource against the Kubernetes API schema (unknown fields fail, so a
   typo such as ``readinesProbe`` cannot slip through), and ``hadolint``
   lints the Dockerfile.
3. **Check that the pieces agree**, which no schema can: the probe paths are
   routes of the app, the container port is the image's ``PORT``, the user id
   is the image's, the grace period covers preStop plus the drain, every
   resource of the kustomization exists, the HPA targets this Deployment, the
   NetworkPolicy admits exactly the port the Service and the probes use, the
   token's Secret is the one the kustomization generates, production runs
   an image digest and not a movable tag.

Run: ``make p3-deploy``.  Writes ``runs/p3-deploy/metrics.json``.  After pushing
the image: ``python -m phase3_production.p3_deploy --pin-image REGISTRY/ml60-serve:1.0``
writes its digest into the production overlay.  Deploying for real (kind,
minikube, SageMaker, Vertex AI) is in ``phase3_production/README.md``.
"""

from __future__ import annotations

import json
import re
import shutil
# bandit B404: runs the project's own validators and docker, never a shell
import subprocess  # nosec B404
import sys
from pathlib import Path

import yaml

from common.script import finish_run, milestone_parser, start_run

MILESTONE = "p3-deploy"
ROOT = Path(__file__).resolve().parent.parent
K8S_DIR = ROOT / "deploy" / "k8s"
PRODUCTION_DIR = ROOT / "deploy" / "overlays" / "production"
TOKEN_SECRET, TOKEN_KEY, TOKEN_ENV = "ml60-api-token", "api-token", "API_TOKEN"   # what serving/auth.py reads
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
PLACEHOLDER_DIGEST = "sha256:" + "0" * 64   # in the overlay until --pin-image writes the pushed image's digest
DOCKERFILE = ROOT / "Dockerfile"
DRAIN_SECONDS = 20          # uvicorn's timeout_graceful_shutdown in serving/__main__.py


def tool(name: str) -> str:
    """A console script installed beside this Python (the venv's bin), else on PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} is not installed; `make p3-deploy` installs it (the project's [deploy] extra: "
                         "pip install -e '.[deploy]')")
    return found


def load_kustomization(k8s_dir: Path = K8S_DIR) -> dict:
    """A folder's ``kustomization.yaml``, parsed."""
    return yaml.safe_load((k8s_dir / "kustomization.yaml").read_text())


def load_resources(k8s_dir: Path = K8S_DIR) -> dict[str, dict]:
    """Every resource the kustomization lists, by file name; a missing or unparsable file is an error."""
    kustomization = load_kustomization(k8s_dir)
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
    # bandit B603: fixed argv
    out = subprocess.run([tool("kubernetes-validate"), "--strict", *map(str, files)],  # nosec B603
                         capture_output=True, text=True)
    return {"ok": out.returncode == 0, "output": (out.stdout + out.stderr).strip()}


def lint_dockerfile(path: Path = DOCKERFILE) -> dict:
    # bandit B603: fixed argv
    out = subprocess.run([tool("hadolint"), str(path)], capture_output=True, text=True)  # nosec B603
    return {"ok": out.returncode == 0, "output": (out.stdout + out.stderr).strip() or "no findings"}


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """The Dockerfile's instructions in order, as ``(KEYWORD, arguments)``: comments dropped, ``\\`` lines joined."""
    instructions, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].strip() + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    if pending:
        keyword, _, arguments = pending.strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def image_user_and_healthcheck(text: str) -> dict:
    """Who the image runs as, and whether it checks its own health: ``{"user", "non_root", "healthcheck"}``.

    Only the **last stage** of a multi-stage Dockerfile becomes the image
    (each ``FROM`` starts a new one), and in it the **last** ``USER`` wins.
    Without a ``USER`` the process runs as whatever the base image says,
    which for ``python:*-slim`` is root: a process that escapes the
    application then owns the container.  ``user`` is the last USER's
    argument (``"10001"``, ``"app"``, ``"10001:10001"``) or None;
    ``non_root`` is False for no USER at all, for ``root`` and for uid ``0``
    (with or without a group: ``0:0``, ``root:root``).

    ``healthcheck`` is True when the last stage has a ``HEALTHCHECK``
    instruction that is not ``HEALTHCHECK NONE`` (which switches off one
    inherited from the base image).  Docker and docker compose use it to
    mark a container unhealthy; Kubernetes ignores it and uses its probes.

    ``text`` is the Dockerfile's text; :func:`dockerfile_instructions` gives
    its instructions with comments dropped (a commented-out HEALTHCHECK is
    no health check).

    See https://docs.docker.com/reference/dockerfile/#user and
    https://docs.docker.com/reference/dockerfile/#healthcheck
    """
    # EXERCISE p3-deploy.4: the image's user and health check
    # hint: keep only the instructions after the last FROM; the last USER there decides (none, root or 0 is root),
    # hint: and a HEALTHCHECK there counts unless its argument is NONE
    stage: list[tuple[str, str]] = []
    for keyword, arguments in dockerfile_instructions(text):
        if keyword == "FROM":
            stage = []
        else:
            stage.append((keyword, arguments))
    users = [arguments for keyword, arguments in stage if keyword == "USER"]
    user = users[-1] if users else None
    name = user.split(":")[0].strip() if user else "root"
    healthchecks = [arguments for keyword, arguments in stage if keyword == "HEALTHCHECK"]
    return {"user": user, "non_root": name not in ("root", "0"),
            "healthcheck": bool(healthchecks) and healthchecks[-1].split()[0].upper() != "NONE"}
    # END EXERCISE


def dockerfile_facts(path: Path = DOCKERFILE) -> dict:
    """What the cross-checks need from the Dockerfile: its PORT, its user (and uid), a HEALTHCHECK, its stages."""
    text = path.read_text()
    instructions = dockerfile_instructions(text)
    port = next((int(m.group(1)) for keyword, arguments in instructions if keyword == "ENV"
                 for m in [re.search(r"\bPORT=(\d+)", arguments)] if m), None)
    image = image_user_and_healthcheck(text)
    user = (image["user"] or "").split(":")[0].strip()
    return {"port": port, "uid": int(user) if user.isdigit() else None, "user": image["user"],
            "non_root": image["non_root"], "healthcheck": image["healthcheck"],
            "stages": sum(keyword == "FROM" for keyword, _ in instructions)}


def quantity(value) -> float:
    """A Kubernetes resource quantity as a plain number: cores for cpu, bytes for memory.

    ``"500m"`` is 0.5 (milli-cores), ``"2"`` and ``2`` are 2, ``"256Mi"`` is
    256 * 2**20 bytes, ``"1G"`` is 10**9.  See
    https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/quantity/
    """
    match = re.fullmatch(r"\s*([0-9.]+(?:[eE][+-]?\d+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2) not in QUANTITY_SUFFIXES:
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 2, 256Mi, 1Gi)")
    return float(match.group(1)) * QUANTITY_SUFFIXES[match.group(2)]


QUANTITY_SUFFIXES = {"": 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
                     "Ki": 2.0 ** 10, "Mi": 2.0 ** 20, "Gi": 2.0 ** 30, "Ti": 2.0 ** 40}


def resource_problems(container: dict) -> list[str]:
    """What is wrong with a container's ``resources``; an empty list when nothing is.

    The scheduler places a pod by its **requests** (a node must have that
    much cpu and memory unreserved); the kubelet enforces the **limits** (cpu
    above its limit is throttled, memory above its limit is OOM-killed).  A
    container without requests may land on a full node; one without limits
    may starve its neighbours.  So: both ``requests`` and ``limits`` set, for
    both ``cpu`` and ``memory``, and each request at most its limit
    (Kubernetes refuses a pod whose request exceeds its limit).  Compare
    quantities as numbers with their units (:func:`quantity`): ``256Mi`` is
    less than ``1Gi``, ``500m`` less than ``2``.

    Each problem names the resource, e.g. ``"no cpu request"``,
    ``"memory request 2Gi is above its limit 1Gi"``.

    See https://kubernetes.io/docs/concepts/configuration/manage-resources-containers/
    """
    # EXERCISE p3-deploy.2: requests and limits
    # hint: for cpu and memory: a missing request or limit is a problem; when both are there,
    # hint: compare quantity(request) with quantity(limit)
    resources = container.get("resources") or {}
    requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
    problems = []
    for resource in ("cpu", "memory"):
        if resource not in requests:
            problems.append(f"no {resource} request")
        if resource not in limits:
            problems.append(f"no {resource} limit")
        if resource in requests and resource in limits and quantity(requests[resource]) > quantity(limits[resource]):
            problems.append(f"{resource} request {requests[resource]} is above its limit {limits[resource]}")
    return problems
    # END EXERCISE


PROBES = ("readinessProbe", "livenessProbe", "startupProbe")
REQUIRED_PROBES = ("readinessProbe", "livenessProbe")


def probe_problem(container: dict, probe: str, routes: set[str]) -> str | None:
    """What is wrong with one of the container's probes (``probe`` names it), or None when nothing is.

    The kubelet sends a **readiness** probe to decide whether the pod gets
    traffic (it should pass only once the model is loaded and verified) and a
    **liveness** probe to decide whether to restart it; a **startup** probe,
    optional, holds the liveness probe off while the pod starts.  Readiness
    and liveness must exist.  No schema can tell whether a probe would ever
    pass: its ``httpGet.path`` must be a route of the app (``routes``), and
    its ``httpGet.port`` a port the container declares, by number
    (``containerPort``) or by name.  A probe that misses either fails
    forever: the pod never becomes ready, or is restarted in a loop.

    The problem names the probe, e.g. ``"readinessProbe path /ready is not a
    route of the app"``.

    See https://kubernetes.io/docs/concepts/configuration/liveness-readiness-startup-probes/
    """
    # EXERCISE p3-deploy.1: probes the app can answer
    # hint: a missing readiness or liveness probe is a problem (startup is optional); otherwise httpGet's path
    # hint: must be in routes and its port one of the container's ports, by containerPort or by name
    if probe not in container:
        return f"no {probe}" if probe in REQUIRED_PROBES else None
    http = container[probe].get("httpGet")
    if not http:
        return f"{probe} has no httpGet"
    if http.get("path") not in routes:
        return f"{probe} path {http.get('path')} is not a route of the app"
    ports = container.get("ports", [])
    declared = {p.get("containerPort") for p in ports} | {p.get("name") for p in ports if p.get("name")}
    if http.get("port") not in declared:
        return f"{probe} port {http.get('port')} is not a port of the container ({sorted(map(str, declared))})"
    return None
    # END EXERCISE


def pre_stop_pause(container: dict) -> float:
    """Seconds the container's preStop hook waits: ``sleep 5``, ``time.sleep(5)`` or the ``sleep`` handler."""
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"].get("seconds", 0))
    command = " ".join(pre_stop.get("exec", {}).get("command", []))
    match = re.search(r"sleep[\s(]+(\d+(?:\.\d+)?)", command)
    return float(match.group(1)) if match else 0.0


DEFAULT_GRACE_SECONDS = 30   # Kubernetes' terminationGracePeriodSeconds when the pod spec leaves it out


def shutdown_budget(pod: dict, drain_seconds: float) -> tuple[float, float]:
    """``(needed, granted)`` seconds for a pod to stop without dropping requests.

    When a pod is deleted (a rolling update, a scale-down), the kubelet
    starts the **termination grace period** and runs each container's
    preStop hook; only when the hook returns does the process get SIGTERM
    and begin draining (uvicorn finishes the requests in flight, up to
    ``drain_seconds``).  When the grace period runs out, SIGKILL.  The
    preStop pause is inside the grace period, not before it, so a container
    needs its pause **plus** the drain; containers stop in parallel, so the
    pod needs the largest of those over its containers.  ``granted`` is the
    pod's ``terminationGracePeriodSeconds``, which is 30 when the spec leaves
    it out.  :func:`pre_stop_pause` reads a container's pause.

    ``pod`` is the pod spec (a Deployment's ``spec.template.spec``).

    See https://kubernetes.io/docs/concepts/workloads/pods/pod-lifecycle/#pod-termination
    """
    # EXERCISE p3-deploy.3: the grace period covers preStop and the drain
    # hint: needed = the largest preStop pause over the containers + drain_seconds;
    # hint: granted = terminationGracePeriodSeconds, and Kubernetes' default when it is absent
    needed = max((pre_stop_pause(c) for c in pod.get("containers", [])), default=0.0) + drain_seconds
    granted = float(pod.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS))
    return needed, granted
    # END EXERCISE


def load_overlay(overlay_dir: Path = PRODUCTION_DIR) -> tuple[dict, dict[str, dict]]:
    """An overlay's kustomization and its own resource files by name (its bases, folders, are not read here)."""
    kustomization = yaml.safe_load((overlay_dir / "kustomization.yaml").read_text())
    own = {}
    for name in kustomization.get("resources", []):
        path = overlay_dir / name
        if path.is_dir():
            continue
        if not path.is_file():
            raise FileNotFoundError(f"{overlay_dir / 'kustomization.yaml'} lists {name}, which does not exist")
        own[name] = yaml.safe_load(path.read_text())
    return kustomization, own


def port_number(container: dict, port) -> int | None:
    """A port given by number or by name (``http``) as the container's port number; None if it has no such port."""
    for declared in container.get("ports", []):
        if port in (declared.get("containerPort"), declared.get("name")):
            return declared["containerPort"]
    return None


def network_policy_checks(resources: dict[str, dict]) -> list[tuple[str, object, object]]:
    """The NetworkPolicy selects the Deployment's pods and admits exactly the port the Service and the probes use.

    A Service's ``targetPort`` and a probe's ``port`` may name a container
    port (``http``) or give its number; so may a policy's ``ports``.  Names
    are resolved to numbers before comparing, so ``http`` and ``8000`` agree.
    """
    by_kind = {r["kind"]: r for r in resources.values()}
    policy, deployment, service = by_kind.get("NetworkPolicy"), by_kind["Deployment"], by_kind["Service"]
    if policy is None:
        return [("a NetworkPolicy guards the pods", "a NetworkPolicy", "none in the kustomization")]
    template = deployment["spec"]["template"]
    container = template["spec"]["containers"][0]
    selector = policy["spec"].get("podSelector", {}).get("matchLabels", {})
    selects = bool(selector) and all(template["metadata"]["labels"].get(k) == v for k, v in selector.items())
    service_ports = {port_number(container, p.get("targetPort", p.get("port"))) for p in service["spec"]["ports"]}
    rules = policy["spec"].get("ingress", [])
    admitted = {port_number(container, p.get("port")) for rule in rules for p in rule.get("ports", [])}
    unrestricted = not rules or any(not rule.get("ports") for rule in rules)   # a rule without ports admits all
    probe_ports = {port_number(container, container[probe]["httpGet"].get("port"))
                   for probe in PROBES if "httpGet" in container.get(probe, {})}
    return [
        ("network policy selects the pods", True, selects),
        ("network policy is for ingress", True, "Ingress" in policy["spec"].get("policyTypes", [])),
        ("network policy admits only the service port", sorted(map(str, service_ports)),
         "every port" if unrestricted else sorted(map(str, admitted))),
        ("probes use the admitted port", sorted(map(str, admitted)), sorted(map(str, probe_ports))),
    ]


def token_checks(resources: dict[str, dict], kustomization: dict) -> list[tuple[str, object, object]]:
    """The container reads ``API_TOKEN`` from the Secret that the kustomization generates, by the same name and key.

    kustomize's ``secretGenerator`` makes the Secret from a file (the token
    never sits in a manifest) and rewrites the Deployment's reference to the
    Secret's hashed name; the reference and the generator must agree on the
    name, and the generator's file must provide the key.
    """
    container = {r["kind"]: r for r in resources.values()}["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    env = next((e for e in container.get("env", []) if e["name"] == TOKEN_ENV), {})
    ref = env.get("valueFrom", {}).get("secretKeyRef", {})
    generated = {g["name"]: g for g in kustomization.get("secretGenerator", [])}.get(TOKEN_SECRET, {})
    keys = [entry.split("=", 1)[0] if "=" in entry else Path(entry).name for entry in generated.get("files", [])]
    if ref:
        found = f"{ref.get('name')}/{ref.get('key')}"
    else:
        found = "a plain value, in the manifest" if "value" in env else "not set"
    return [
        (f"{TOKEN_ENV} comes from a Secret", f"{TOKEN_SECRET}/{TOKEN_KEY}", found),
        (f"the kustomization generates {TOKEN_SECRET}", [TOKEN_KEY], keys),
    ]


def image_pin_problem(kustomization: dict, image: str = "ml60-serve") -> str | None:
    """What keeps an overlay from running ``image`` by digest, or None when it pins it.

    ``images: - name: ml60-serve, digest: sha256:...`` makes kustomize write
    ``image: NAME@sha256:...``: the manifest names the image's content, which
    no push can change.  A ``newTag`` (or a tag in ``newName``) names a label
    that a push can move to other bytes.
    """
    entry = next((i for i in kustomization.get("images", []) if i.get("name") == image), None)
    if entry is None:
        return f"no images entry for {image}: the base's tag is used"
    if "newTag" in entry or ":" in entry.get("newName", "").rsplit("/", 1)[-1]:
        return f"a tag ({entry.get('newTag') or entry['newName']}) names {image}; tags can be moved"
    if not DIGEST.fullmatch(str(entry.get("digest", ""))):
        return f"digest {entry.get('digest')!r} is not sha256: and 64 hex digits"
    return None


def production_checks(kustomization: dict, own: dict[str, dict], resources: dict[str, dict],
                      base_namespace: str | None) -> list[tuple]:
    """The production overlay builds on the base, in its namespace, pins the image, and routes to the Service's port.

    The namespace matters: a base's ``namespace:`` applies to the base's
    resources only, so an overlay without it would put its Ingress in
    ``default``, where no Service ``ml60-serve`` answers.
    """
    service = {r["kind"]: r for r in resources.values()}["Service"]
    ingress = next((r for r in own.values() if r.get("kind") == "Ingress"), None)
    backends = [path["backend"]["service"] for rule in (ingress or {}).get("spec", {}).get("rules", [])
                for path in rule.get("http", {}).get("paths", [])]
    service_ports = [key for p in service["spec"]["ports"] for key in (p.get("name"), p.get("port"))]
    routed = bool(backends) and all(b["name"] == service["metadata"]["name"] and
                                    (b["port"].get("name") or b["port"].get("number")) in service_ports
                                    for b in backends)
    return [
        ("production builds on the base", True,
         any(Path(r).name == K8S_DIR.name for r in kustomization.get("resources", []))),
        ("production pins the image by digest", "no problem", image_pin_problem(kustomization) or "no problem"),
        ("production namespace = the base's", base_namespace, kustomization.get("namespace")),
        ("ingress routes to the service port", True, routed),
    ]


def image_name(ref: str) -> str:
    """``registry:5000/team/ml60-serve:1.0`` (or ``...@sha256:...``) without its tag or digest."""
    name = ref.split("@", 1)[0]
    head, _, last = name.rpartition("/")
    return f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]


def image_digest(ref: str) -> str:
    """The digest of a pushed image, as the registry reports it (``docker buildx imagetools inspect``)."""
    # bandit B603: fixed argv
    out = subprocess.run([tool("docker"), "buildx", "imagetools", "inspect", ref,  # nosec B603
                          "--format", "{{json .Manifest}}"], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"cannot read the digest of {ref}: {(out.stderr or out.stdout).strip()} "
                         "(is it pushed, and are you logged in to its registry?)")
    digest = json.loads(out.stdout).get("digest", "")
    if not DIGEST.fullmatch(digest):
        raise SystemExit(f"docker buildx imagetools inspect {ref} gave no sha256 digest: {out.stdout[:200]}")
    return digest


def pin_image(ref: str, digest: str, overlay_dir: Path = PRODUCTION_DIR) -> Path:
    """Write ``newName`` (``ref`` without its tag) and ``digest`` into the overlay, keeping its comments."""
    if not DIGEST.fullmatch(digest):
        raise ValueError(f"{digest!r} is not a digest (sha256: and 64 hex digits)")
    path = overlay_dir / "kustomization.yaml"
    text = path.read_text()
    for key, value in (("newName", image_name(ref)), ("digest", digest)):
        text, count = re.subn(rf"^([ \t]+){key}:.*$", rf"\g<1>{key}: {value}", text, count=1, flags=re.MULTILINE)
        if count != 1:
            raise ValueError(f"{path}: no '{key}:' line under images to write {value} into")
    path.write_text(text)
    return path


def as_checks(rows: list[tuple]) -> list[dict]:
    """``(name, expected, found)`` rows as check records: ok when found equals expected."""
    return [{"check": name, "expected": expected, "found": found, "ok": expected == found}
            for name, expected, found in rows]


def consistency(resources: dict[str, dict], facts: dict, routes: set[str]) -> list[dict]:
    """Checks that span files: each a name, what was expected, what was found, ok."""
    by_kind = {r["kind"]: r for r in resources.values()}
    deployment, service, hpa = by_kind["Deployment"], by_kind["Service"], by_kind["HorizontalPodAutoscaler"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == "http")
    security = container.get("securityContext", {})
    needed, granted = shutdown_budget(pod, DRAIN_SECONDS)
    resource_issues = resource_problems(container)
    image_user = facts["uid"] if facts["non_root"] else "a non-root USER in the image"
    checks = [
        ("two replicas", 2, deployment["spec"]["replicas"]),
        ("readiness probe is a route", "/readyz", container.get("readinessProbe", {}).get("httpGet", {}).get("path")),
        ("liveness probe is a route", "/healthz", container.get("livenessProbe", {}).get("httpGet", {}).get("path")),
        ("container port = the image's PORT", facts["port"], port),
        ("PORT env = container port", str(port), env.get("PORT")),
        ("runs as the image's non-root user", image_user, pod.get("securityContext", {}).get("runAsUser")),
        ("read-only root filesystem", True, security.get("readOnlyRootFilesystem")),
        ("no privilege escalation", False, security.get("allowPrivilegeEscalation")),
        ("requests <= limits, cpu and memory", "no problem", "; ".join(resource_issues) or "no problem"),
        ("grace period covers preStop + drain", True, granted >= needed),
        ("service selects the pods", deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"],
         service["spec"]["selector"]["app.kubernetes.io/name"]),
        ("HPA targets the deployment", deployment["metadata"]["name"], hpa["spec"]["scaleTargetRef"]["name"]),
        ("HPA minimum >= replicas", True, hpa["spec"]["minReplicas"] >= deployment["spec"]["replicas"]),
        *network_policy_checks(resources),
    ]
    out = as_checks(checks)
    for probe in PROBES:
        if probe in container or probe in REQUIRED_PROBES:
            problem = probe_problem(container, probe, routes)
            out.append({"check": f"{probe} path exists in the app", "expected": "no problem",
                        "found": problem or "no problem", "ok": problem is None})
    return out


def app_routes() -> set[str]:
    """Every path the service answers, read from the app itself (no model is loaded to build it)."""
    from phase3_production.serving.app import create_app
    from phase3_production.serving.config import Settings

    app = create_app(Settings())          # building the app loads nothing; the model loads at startup
    return route_paths(app.routes)


def route_paths(routes, prefix: str = "") -> set[str]:
    """The paths of a list of routes, descending into included routers (``app.include_router``)."""
    paths = set()
    for route in routes:
        if getattr(route, "path", None) is not None:
            paths.add(prefix + route.path)
        included = getattr(route, "original_router", None)   # how FastAPI keeps an included router
        if included is not None:
            context = getattr(route, "include_context", None)
            paths |= route_paths(included.routes, prefix + (getattr(context, "prefix", "") or ""))
    return paths


def main(argv: list[str] | None = None) -> dict:
    parser = milestone_parser(MILESTONE, __doc__)
    parser.add_argument("--k8s-dir", default=str(K8S_DIR), help="the base kustomization")
    parser.add_argument("--production-dir", default=str(PRODUCTION_DIR), help="the production overlay")
    parser.add_argument("--pin-image", metavar="REF", default=None,
                        help="a pushed image (REGISTRY/ml60-serve:1.0): write its digest into the production overlay")
    args = parser.parse_args(argv)
    run_dir = start_run(MILESTONE, args)
    print(__doc__.split("\n\n")[0])
    k8s_dir, production_dir = Path(args.k8s_dir), Path(args.production_dir)
    if args.pin_image:
        digest = image_digest(args.pin_image)
        pin_image(args.pin_image, digest, production_dir)
        print(f"\n-- 0. Pinned {args.pin_image} as {image_name(args.pin_image)}@{digest} in "
              f"{production_dir / 'kustomization.yaml'} --")

    print(f"\n-- 1. The resources of {k8s_dir / 'kustomization.yaml'} and of the production overlay --")
    resources = load_resources(k8s_dir)
    production, production_own = load_overlay(production_dir)
    for name, r in [*resources.items(), *production_own.items()]:
        print(f"  {name:<18} {r['apiVersion']:<24} {r['kind']}")

    print("\n-- 2. kubernetes-validate --strict (Kubernetes API schemas, unknown fields fail) --")
    schemas = validate_schemas([k8s_dir / name for name in resources] + [production_dir / n for n in production_own])
    print("  " + schemas["output"].replace("\n", "\n  "))

    print("\n-- 3. hadolint Dockerfile --")
    lint = lint_dockerfile()
    print(f"  {lint['output']}")
    facts = dockerfile_facts()
    user = f"USER {facts['user']}" if facts["user"] else "no USER"
    print(f"  the image: {user} ({'non-root' if facts['non_root'] else 'runs as ROOT'}), "
          f"HEALTHCHECK {'yes' if facts['healthcheck'] else 'NONE'}, PORT {facts['port']}, {facts['stages']} stages")

    print("\n-- 4. Do the manifests, the image and the app agree? --")
    base = load_kustomization(k8s_dir)
    checks = (consistency(resources, facts, app_routes()) + as_checks(token_checks(resources, base))
              + as_checks(production_checks(production, production_own, resources, base.get("namespace"))))
    for c in checks:
        print(f"  {'ok ' if c['ok'] else 'BAD'} {c['check']:<44} expected {c['expected']!s:<16} found {c['found']}")
    digest = next((i.get("digest") for i in production.get("images", []) if i.get("name") == "ml60-serve"), None)
    pinned = bool(digest) and DIGEST.fullmatch(digest) is not None and digest != PLACEHOLDER_DIGEST
    if not pinned:
        print("  note: the production digest is the all-zeros placeholder; after pushing the image run "
              "`python -m phase3_production.p3_deploy --pin-image REGISTRY/ml60-serve:TAG`")
    passed = sum(c["ok"] for c in checks)
    files = len(resources) + len(production_own)
    ok = schemas["ok"] and lint["ok"] and passed == len(checks) and facts["healthcheck"]
    print(f"\nResult: {'all checks pass' if ok else 'PROBLEMS above'}: {files} manifests valid "
          f"({'yes' if schemas['ok'] else 'NO'}), Dockerfile lint {'clean' if lint['ok'] else 'FAILED'}, "
          f"{passed}/{len(checks)} cross-checks. Deploy: kubectl apply -k {shown(k8s_dir)} "
          f"(production: kubectl apply -k {shown(production_dir)})")
    return finish_run(run_dir, MILESTONE, args,
                      key_figure={"name": "deploy_checks_passed", "value": passed,
                                  "display": f"{files} manifests valid, Dockerfile lint clean, "
                                             f"{passed}/{len(checks)} cross-checks" if ok else "PROBLEMS"},
                      resources={n: r["kind"] for n, r in [*resources.items(), *production_own.items()]},
                      schema_validation=schemas, dockerfile_lint=lint, dockerfile=facts, cross_checks=checks,
                      production_image={"digest": digest, "pinned": pinned})


def shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (what to type from its root)."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def check(metrics: dict) -> list[str]:
    problems = []
    if not metrics.get("schema_validation", {}).get("ok"):
        problems.append("kubernetes-validate --strict failed")
    if not metrics.get("dockerfile_lint", {}).get("ok"):
        problems.append("hadolint found problems in the Dockerfile")
    if not metrics.get("dockerfile", {}).get("healthcheck"):
        problems.append("the Dockerfile has no HEALTHCHECK")
    bad = [c["check"] for c in metrics.get("cross_checks", []) if not c["ok"]]
    if bad or not metrics.get("cross_checks"):
        problems.append(f"cross-checks failed: {', '.join(bad) or 'none ran'}")
    return problems


if __name__ == "__main__":
    main()
