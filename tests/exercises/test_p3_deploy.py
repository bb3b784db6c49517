"""Checks for p3-deploy's exercises (``make check M=p3-deploy``), and the mistakes they must catch.

The inputs are small manifests and Dockerfiles written here, with the answers
worked out by hand from the Kubernetes and Docker documentation: never the
repository's own deploy files, and never the code under test (which may be a
learner's, or a stub).
"""

from __future__ import annotations

import copy

from ml60.grading import exercise, expect, wrong_answer
from phase3_production import p3_deploy

ROUTES = {"/healthz", "/readyz", "/metrics", "/v1/predict"}


def container(**changes) -> dict:
    """A container that gets everything right; ``changes`` replace top-level fields (None deletes one)."""
    base = {
        "name": "serve",
        "ports": [{"name": "http", "containerPort": 8000}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8000}},
        "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}},
    }
    for key, value in changes.items():
        if value is None:
            base.pop(key, None)
        else:
            base[key] = value
    return copy.deepcopy(base)


# --------------------------------------------------------------------------- p3-deploy.1 probes


def problem_of(spec: dict, probe: str):
    problem = p3_deploy.probe_problem(copy.deepcopy(spec), probe, set(ROUTES))
    expect(problem is None or (isinstance(problem, str) and problem.strip()),
           f"probe_problem returns None or a message, got {problem!r}")
    return problem


@exercise("p3-deploy.1")
def test_good_probes_have_no_problem():
    spec = container(startupProbe={"httpGet": {"path": "/healthz", "port": "http"}})
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        problem = problem_of(spec, probe)
        expect(problem is None, f"{probe} on {spec[probe]['httpGet']} is fine (a route of the app, and the "
                                f"container's port, by name 'http' or by number 8000), yet: {problem!r}. A probe's "
                                "port may name a containerPort as well as give its number: accept it by name")
    expect(problem_of(container(), "startupProbe") is None,
           "a container without a startupProbe is fine (it is optional), yet probe_problem reports one")


@exercise("p3-deploy.1")
def test_a_probe_on_a_path_the_app_lacks_is_a_problem():
    spec = container(readinessProbe={"httpGet": {"path": "/ready", "port": "http"}})
    expect(problem_of(spec, "readinessProbe") is not None,
           f"a readinessProbe on /ready says nothing wrong, but /ready is not a route of the app (routes: "
           f"{sorted(ROUTES)}): the probe would fail forever and the pod never get traffic")
    expect(problem_of(spec, "livenessProbe") is None,
           "the livenessProbe is fine, yet probe_problem reports a problem when asked about it: judge only the "
           "probe named by the argument")


@exercise("p3-deploy.1")
def test_a_probe_on_a_port_the_container_lacks_is_a_problem():
    for port in ("metrics", 9000):
        spec = container(livenessProbe={"httpGet": {"path": "/healthz", "port": port}})
        expect(problem_of(spec, "livenessProbe") is not None,
               f"a livenessProbe on port {port!r} says nothing wrong, but {port!r} is not a port the container "
               "declares (it has 'http' = 8000): the kubelet would restart the pod in a loop")


@exercise("p3-deploy.1")
def test_a_missing_readiness_or_liveness_probe_is_a_problem():
    for probe in ("readinessProbe", "livenessProbe"):
        expect(problem_of(container(**{probe: None}), probe) is not None,
               f"a pod without a {probe} says nothing wrong: without readiness it gets traffic before the model "
               "is loaded; without liveness a hung process is never restarted")


@wrong_answer("p3-deploy.1", diagnosis="is not a route of the app")
def probe_ignores_routes(container, probe, routes):
    """Only the probe's presence and port are checked: any path passes."""
    if probe not in container:
        return f"no {probe}" if probe != "startupProbe" else None
    ports = container.get("ports", [])
    declared = {p["containerPort"] for p in ports} | {p.get("name") for p in ports}
    return None if container[probe]["httpGet"].get("port") in declared else f"{probe}: unknown port"


@wrong_answer("p3-deploy.1", diagnosis="is not a port the container")
def probe_ignores_port(container, probe, routes):
    """Only the path is checked: a probe on a port nobody listens on passes."""
    if probe not in container:
        return f"no {probe}" if probe != "startupProbe" else None
    path = container[probe]["httpGet"].get("path")
    return None if path in routes else f"{probe}: {path} is not a route"


@wrong_answer("p3-deploy.1", diagnosis="accept it by name")
def probe_ports_by_number_only(container, probe, routes):
    """The port is compared with the containerPort numbers only, so a named port ('http') is refused."""
    if probe not in container:
        return f"no {probe}" if probe != "startupProbe" else None
    http = container[probe]["httpGet"]
    if http.get("path") not in routes:
        return f"{probe}: {http.get('path')} is not a route"
    numbers = {p["containerPort"] for p in container.get("ports", [])}
    return None if http.get("port") in numbers else f"{probe}: port {http.get('port')} is not declared"


@wrong_answer("p3-deploy.1", diagnosis="a pod without a readinessProbe")
def probe_missing_is_fine(container, probe, routes):
    """A probe that is absent is reported as having no problem."""
    if probe not in container:
        return None
    http = container[probe]["httpGet"]
    ports = container.get("ports", [])
    declared = {p["containerPort"] for p in ports} | {p.get("name") for p in ports}
    if http.get("path") not in routes or http.get("port") not in declared:
        return f"{probe} is wrong"
    return None


# --------------------------------------------------------------------------- p3-deploy.2 resources


def problems_of(resources: dict | None) -> list[str]:
    spec = container(resources=resources) if resources is not None else container(resources=None)
    problems = p3_deploy.resource_problems(spec)
    expect(isinstance(problems, list) and all(isinstance(p, str) for p in problems),
           f"resource_problems returns a list of messages, got {problems!r}")
    return problems


@exercise("p3-deploy.2")
def test_sound_resources_have_no_problem():
    problems = problems_of({"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}})
    expect(not problems, f"requests 500m / 256Mi under limits 2 / 1Gi are fine, yet: {problems}. 256Mi is less than "
                         "1Gi and 500m less than 2: compare the quantities with their units (quantity())")
    problems = problems_of({"requests": {"cpu": 1, "memory": "1Gi"}, "limits": {"cpu": 1, "memory": "1Gi"}})
    expect(not problems, f"requests equal to limits (the Guaranteed class) are fine, yet: {problems}")


@exercise("p3-deploy.2")
def test_missing_requests_or_limits_are_problems():
    only_limits = problems_of({"limits": {"cpu": "2", "memory": "1Gi"}})
    expect(any("cpu" in p for p in only_limits) and any("memory" in p for p in only_limits),
           f"a container with limits and no requests gets {only_limits}: report the missing cpu and memory "
           "requests (the scheduler places pods by their requests; without them the pod may land on a full node)")
    no_memory_limit = problems_of({"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"cpu": "2"}})
    expect(any("memory" in p for p in no_memory_limit),
           f"a container with no memory limit gets {no_memory_limit}: report it, naming memory (without a limit "
           "a leak takes the node's memory from its neighbours)")
    expect(problems_of(None), "a container with no resources at all gets no problem: report the missing requests "
                              "and limits")


@exercise("p3-deploy.2")
def test_a_request_above_its_limit_is_a_problem():
    problems = problems_of({"requests": {"cpu": "500m", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "1Gi"}})
    expect(any("memory" in p for p in problems),
           f"a memory request of 2Gi with a limit of 1Gi gets {problems}: a request above its limit is a problem "
           "(Kubernetes refuses the pod), name the resource")
    problems = problems_of({"requests": {"cpu": "2500m", "memory": "256Mi"}, "limits": {"cpu": 2, "memory": "1Gi"}})
    expect(any("cpu" in p for p in problems),
           f"a cpu request of 2500m (2.5 cores) with a limit of 2 gets {problems}: a request above its limit is a "
           "problem, compare quantity(request) with quantity(limit)")


@wrong_answer("p3-deploy.2", diagnosis="report the missing cpu and memory requests")
def resources_limits_only(container):
    """Only the limits are looked at: a pod without requests passes."""
    limits = (container.get("resources") or {}).get("limits") or {}
    return [f"no {r} limit" for r in ("cpu", "memory") if r not in limits]


@wrong_answer("p3-deploy.2", diagnosis="a request above its limit is a problem")
def resources_presence_only(container):
    """Requests and limits must be there, but a request above its limit passes."""
    resources = container.get("resources") or {}
    return [f"no {r} {kind[:-1]}" for kind in ("requests", "limits") for r in ("cpu", "memory")
            if r not in (resources.get(kind) or {})]


@wrong_answer("p3-deploy.2", diagnosis="compare the quantities with their units")
def resources_compared_without_units(container):
    """The numbers are compared without their units: 256Mi looks larger than 1Gi."""
    resources = container.get("resources") or {}
    requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
    problems = [f"no {r} {kind[:-1]}" for kind, values in (("requests", requests), ("limits", limits))
                for r in ("cpu", "memory") if r not in values]
    for r in ("cpu", "memory"):
        if r in requests and r in limits:
            number = lambda v: float("".join(ch for ch in str(v) if ch.isdigit() or ch == ".") or 0)  # noqa: E731
            if number(requests[r]) > number(limits[r]):
                problems.append(f"{r} request above limit")
    return problems


# --------------------------------------------------------------------------- p3-deploy.3 grace period


def sleeper(seconds, name="serve") -> dict:
    return {"name": name, "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(seconds)]}}}}


def budget(pod: dict, drain: float) -> tuple[float, float]:
    result = p3_deploy.shutdown_budget(copy.deepcopy(pod), drain)
    expect(isinstance(result, tuple) and len(result) == 2 and all(isinstance(v, (int, float)) for v in result),
           f"shutdown_budget returns (needed, granted) in seconds, got {result!r}")
    return float(result[0]), float(result[1])


@exercise("p3-deploy.3")
def test_the_pre_stop_pause_counts_inside_the_grace_period():
    pause = {"preStop": {"exec": {"command": ["python", "-c", "import time; time.sleep(5)"]}}}
    pod = {"terminationGracePeriodSeconds": 30, "containers": [{"name": "serve", "lifecycle": pause}]}
    needed, granted = budget(pod, 20)
    expect(granted == 30, f"granted is {granted:g} s for terminationGracePeriodSeconds: 30")
    expect(needed != 20, "needed is 20 s, the drain alone, but the preStop pause counts: it runs inside the grace "
                         "period, before SIGTERM, so needed = 5 s of pause + 20 s of drain")
    expect(needed == 25, f"needed is {needed:g} s, expected 5 s of preStop pause + 20 s of drain = 25 s")
    needed, _ = budget({"terminationGracePeriodSeconds": 30, "containers": [{"name": "serve"}]}, 20)
    expect(needed == 20, f"a container without preStop needs just the drain (20 s), got {needed:g} s")


@exercise("p3-deploy.3")
def test_an_absent_grace_period_is_kubernetes_default():
    needed, granted = budget({"containers": [sleeper(10)]}, 25)
    expect(granted == 30, f"granted is {granted:g} s for a pod spec without terminationGracePeriodSeconds: "
                          "Kubernetes' default of 30 s applies")
    expect(needed == 35, f"needed is {needed:g} s, expected 10 s of preStop + 25 s of drain = 35 s (more than the "
                         "default 30: such a pod is killed mid-drain)")


@exercise("p3-deploy.3")
def test_containers_stop_in_parallel():
    pod = {"terminationGracePeriodSeconds": 45, "containers": [sleeper(5), sleeper(12, name="sidecar")]}
    needed, granted = budget(pod, 20)
    expect(granted == 45, f"granted is {granted:g} s for terminationGracePeriodSeconds: 45")
    expect(needed != 37, "needed is 37 s, the sum of both pauses plus the drain: containers stop in parallel, so "
                         "the pod needs the longest pause (12 s) plus the drain")
    expect(needed == 32, f"needed is {needed:g} s, expected the longest preStop pause (12 s) + the drain (20 s) = 32 s")


@wrong_answer("p3-deploy.3", diagnosis="the preStop pause counts")
def budget_without_pre_stop(pod, drain_seconds):
    """The grace period is compared with the drain alone, as if preStop ran before the clock starts."""
    return float(drain_seconds), float(pod.get("terminationGracePeriodSeconds", 30))


@wrong_answer("p3-deploy.3", diagnosis="Kubernetes' default of 30 s")
def budget_without_default(pod, drain_seconds):
    """A pod spec without terminationGracePeriodSeconds is taken to grant nothing."""
    pause = max((p3_deploy.pre_stop_pause(c) for c in pod.get("containers", [])), default=0.0)
    return pause + drain_seconds, float(pod.get("terminationGracePeriodSeconds", 0))


@wrong_answer("p3-deploy.3", diagnosis="containers stop in parallel")
def budget_sums_pauses(pod, drain_seconds):
    """The preStop pauses of all containers are added up, as if they ran one after another."""
    pause = sum(p3_deploy.pre_stop_pause(c) for c in pod.get("containers", []))
    return pause + drain_seconds, float(pod.get("terminationGracePeriodSeconds", 30))


# --------------------------------------------------------------------------- p3-deploy.4 the image


BUILD_STAGE = """# syntax=docker/dockerfile:1
FROM python:3.11-slim AS build
RUN python -m venv /opt/venv
"""
RUNTIME_STAGE = """FROM python:3.11-slim
ENV PORT=8000
COPY --from=build /opt/venv /opt/venv
"""
HEALTHCHECK = """HEALTHCHECK --interval=15s --timeout=3s \\
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"]
"""
ENTRYPOINT = 'ENTRYPOINT ["python", "-m", "phase3_production.serving"]\n'


def facts_of(text: str) -> dict:
    facts = p3_deploy.image_user_and_healthcheck(text)
    missing = [k for k in ("user", "non_root", "healthcheck") if not isinstance(facts, dict) or k not in facts]
    expect(not missing, f"image_user_and_healthcheck returns no {', '.join(missing)}")
    return facts


@exercise("p3-deploy.4")
def test_a_non_root_user_is_recognised():
    for user in ("10001", "app", "10001:10001", "app:app"):
        facts = facts_of(BUILD_STAGE + RUNTIME_STAGE + f"USER {user}\n" + HEALTHCHECK + ENTRYPOINT)
        expect(facts["user"] == user, f"user is {facts['user']!r} for 'USER {user}' in the last stage")
        expect(facts["non_root"] is True, f"'USER {user}' runs as a non-root user, yet non_root is {facts['non_root']}")


@exercise("p3-deploy.4")
def test_root_in_any_spelling_is_root():
    for user in ("root", "0", "0:0", "root:root"):
        facts = facts_of(BUILD_STAGE + RUNTIME_STAGE + f"USER {user}\n" + HEALTHCHECK + ENTRYPOINT)
        expect(facts["non_root"] is False,
               f"'USER {user}' runs as root (uid 0), yet non_root is {facts['non_root']}: USER root and uid 0 are "
               "root, with or without a group")
    facts = facts_of(BUILD_STAGE + RUNTIME_STAGE + HEALTHCHECK + ENTRYPOINT)
    expect(facts["user"] is None and facts["non_root"] is False,
           f"without any USER the image runs as the base image's user, root; got user {facts['user']!r}, "
           f"non_root {facts['non_root']}")
    facts = facts_of(BUILD_STAGE + RUNTIME_STAGE + "USER 10001\nRUN echo hi\nUSER root\n" + HEALTHCHECK + ENTRYPOINT)
    expect(facts["non_root"] is False, "USER 10001 then USER root: the last USER wins, so the image runs as root, "
                                       f"yet non_root is {facts['non_root']}")


@exercise("p3-deploy.4")
def test_only_the_last_stage_becomes_the_image():
    text = BUILD_STAGE.replace("RUN python", "USER 1000\nHEALTHCHECK CMD true\nRUN python") + RUNTIME_STAGE + ENTRYPOINT
    facts = facts_of(text)
    expect(facts["non_root"] is False and facts["user"] is None,
           f"the USER 1000 is in the build stage; the last stage has none and runs as root, yet user is "
           f"{facts['user']!r}, non_root {facts['non_root']}: only the last stage becomes the image (start again "
           "at every FROM)")
    expect(facts["healthcheck"] is False, "the HEALTHCHECK is in the build stage only, yet healthcheck is True: "
                                          "only the last stage becomes the image")


@exercise("p3-deploy.4")
def test_a_healthcheck_must_be_a_live_instruction():
    facts = facts_of(BUILD_STAGE + RUNTIME_STAGE + "USER 10001\n" + HEALTHCHECK + ENTRYPOINT)
    expect(facts["healthcheck"] is True, "a HEALTHCHECK instruction (over two lines, joined by \\) in the last stage "
                                         "is not recognised: healthcheck should be True")
    commented = "".join(f"# {line}\n" for line in HEALTHCHECK.splitlines())
    facts = facts_of(BUILD_STAGE + RUNTIME_STAGE + "USER 10001\n" + commented + ENTRYPOINT)
    expect(facts["healthcheck"] is False, "a HEALTHCHECK inside a comment is no health check, yet healthcheck is "
                                          "True: read the instructions (dockerfile_instructions), not the text")
    facts = facts_of(BUILD_STAGE + RUNTIME_STAGE + "USER 10001\nHEALTHCHECK NONE\n" + ENTRYPOINT)
    expect(facts["healthcheck"] is False, "HEALTHCHECK NONE switches the health check off, yet healthcheck is True")


@wrong_answer("p3-deploy.4", diagnosis="USER root and uid 0 are root")
def image_any_user_is_non_root(text):
    """Any USER line counts as non-root, USER root and USER 0 included."""
    stage = []
    for keyword, arguments in p3_deploy.dockerfile_instructions(text):
        stage = [] if keyword == "FROM" else stage + [(keyword, arguments)]
    users = [a for k, a in stage if k == "USER"]
    checks = [a for k, a in stage if k == "HEALTHCHECK"]
    return {"user": users[-1] if users else None, "non_root": bool(users),
            "healthcheck": bool(checks) and checks[-1].split()[0].upper() != "NONE"}


@wrong_answer("p3-deploy.4", diagnosis="is in the build stage")
def image_first_user_of_any_stage(text):
    """Every stage is read as one: a USER or HEALTHCHECK of the build stage counts for the image."""
    instructions = p3_deploy.dockerfile_instructions(text)
    users = [a for k, a in instructions if k == "USER"]
    checks = [a for k, a in instructions if k == "HEALTHCHECK"]
    user = users[-1] if users else None
    return {"user": user, "non_root": user is not None and user.split(":")[0] not in ("root", "0"),
            "healthcheck": bool(checks) and checks[-1].split()[0].upper() != "NONE"}


@wrong_answer("p3-deploy.4", diagnosis="inside a comment is no health check")
def image_healthcheck_by_substring(text):
    """HEALTHCHECK is searched for in the raw text, comments and HEALTHCHECK NONE included."""
    stage = []
    for keyword, arguments in p3_deploy.dockerfile_instructions(text):
        stage = [] if keyword == "FROM" else stage + [(keyword, arguments)]
    users = [a for k, a in stage if k == "USER"]
    user = users[-1] if users else None
    return {"user": user, "non_root": user is not None and user.split(":")[0] not in ("root", "0"),
            "healthcheck": "HEALTHCHECK" in text}
