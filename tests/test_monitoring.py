"""Prometheus for real: the alert rules, their unit tests and the dashboard, checked by Prometheus itself.

deploy/monitoring/ holds what an operator loads into Prometheus and Grafana:
``prometheus.yml`` (the scrape), ``alerts.yml`` (the rules), ``alerts.test.yml``
(promtool's unit tests of the rules) and ``grafana-dashboard.json``.  A rule
file is code that only runs in production, at the worst moment; these tests
run it before then:

* ``test_promtool_accepts`` - promtool parses the config and the rules: the
  YAML, every PromQL expression, every annotation template.  A file that fails
  here is a file Prometheus refuses to load (or silently keeps the old one).
* ``test_promtool_unit_tests_pass`` - the rules behave as alerts.test.yml says:
  made-up series in, the alerts that fire (with their labels and annotations)
  out, minute by minute, without waiting an hour for a real ``for: 10m``.
* ``test_every_alert_is_tested_firing_and_quiet`` - an alert tested only where
  it fires would pass with ``expr: vector(1)``; one tested only where it is
  quiet would pass with an expression that never fires.  Each needs both, and
  each test case must name an alert that exists: promtool finds nothing firing
  for a misspelt name, so "expect nothing" would pass for ever.
* ``test_a_changed_threshold_fails_the_unit_tests`` - the tests of the tests:
  copy the rules, change one threshold or condition, and promtool must now
  fail, naming that alert.  Unit tests that still pass against a broken rule
  prove nothing.
* ``test_every_metric_named_exists_in_the_service`` - a misspelt metric is
  not an error in PromQL: it is an empty result, and an alert on it is quiet
  for ever.  Every ``ml60_*`` name in the rules and the dashboard must be one
  the service's registry really exposes.
* ``test_live_drift_alert_fires_in_a_real_prometheus`` (slow) - the whole
  chain on loopback: the real service, a real Prometheus scraping it every
  second and evaluating the real alerts.yml; clean traffic raises nothing,
  shifted traffic raises ML60DriftAlarm within seconds, and every dashboard
  query is accepted by that Prometheus.

promtool and prometheus are programs beside Python (Debian's ``prometheus``
package).  Missing, these tests skip and say how to get them; with
``ML60_REAL_TOOLS=1`` (``make test REAL_TOOLS=1``, what CI runs) they fail
instead: a check that can quietly vanish is not a check.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pytest
import yaml
from tests.real_tools import tool

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "deploy" / "monitoring"
PROMETHEUS_CONFIG = MONITORING / "prometheus.yml"
ALERTS = MONITORING / "alerts.yml"
ALERT_TESTS = MONITORING / "alerts.test.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"

pytestmark = getattr(pytest.mark, "p3-monitor")


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def output(result: subprocess.CompletedProcess) -> str:
    return f"exit code {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of every panel, rows' nested panels included."""
    def walk(panels):
        for panel in panels:
            yield from ((panel["title"], t["expr"]) for t in panel.get("targets", []) if t.get("expr"))
            yield from walk(panel.get("panels", []))
    return list(walk(json.loads(DASHBOARD.read_text())["panels"]))


# --------------------------------------------------------------------------- static checks with promtool


@pytest.mark.parametrize("command, path", [("config", PROMETHEUS_CONFIG), ("rules", ALERTS)], ids=["config", "rules"])
def test_promtool_accepts(command, path):
    result = promtool("check", command, str(path))
    assert result.returncode == 0, output(result)


def test_promtool_unit_tests_pass():
    result = promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, output(result)


def test_every_alert_is_tested_firing_and_quiet():
    names = {rule["alert"] for rule in alert_rules()}
    fires, quiet = set(), set()
    for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert len(names) >= 6, names
    assert not (fires | quiet) - names, f"test cases name alerts that alerts.yml lacks: {(fires | quiet) - names}"
    assert not names - fires, f"never tested where they fire: {sorted(names - fires)}"
    assert not names - quiet, f"never tested where they stay quiet: {sorted(names - quiet)}"


# Each mutant changes one alert the way a careless edit would; the unit tests must notice.
MUTANTS = {
    "latency SLO 0.25 -> 2.5 s": ("ML60PredictionLatencyHigh", ") > 0.25", ") > 2.5"),
    "drift condition == 1 -> == 2": ("ML60DriftAlarm", "expr: ml60_drift_alarm == 1", "expr: ml60_drift_alarm == 2"),
    "503s counted as server errors": ("ML60ServerErrors", ', status!="503"', ""),
    "accuracy floor 0.70 -> 0.60": ("ML60LiveAccuracyLow", "ml60_live_accuracy < 0.70", "ml60_live_accuracy < 0.60"),
    "no alert when the target vanished": ("ML60NotReady", 'or absent(up{job="ml60"})', ""),
    "latency alert without its for: 5m": ("ML60PredictionLatencyHigh", ") > 0.25\n        for: 5m", ") > 0.25"),
}


@pytest.mark.parametrize("alert, old, new", list(MUTANTS.values()), ids=list(MUTANTS))
def test_a_changed_threshold_fails_the_unit_tests(tmp_path, alert, old, new):
    rules = ALERTS.read_text()
    assert rules.count(old) == 1, f"the mutant's anchor {old!r} must occur exactly once in alerts.yml"
    (tmp_path / "alerts.yml").write_text(rules.replace(old, new))
    shutil.copy(ALERT_TESTS, tmp_path / "alerts.test.yml")
    result = promtool("test", "rules", "alerts.test.yml", cwd=tmp_path)
    assert result.returncode != 0, f"the unit tests still pass with the {alert} rule broken:\n{output(result)}"
    assert f"alertname: {alert}," in result.stdout + result.stderr, output(result)


# --------------------------------------------------------------------------- the names against the service


def exposed_names() -> tuple[set[str], set[str]]:
    """The series names the service's registry can expose, and the metric families they belong to.

    Read from the ``# TYPE`` lines: a labelled metric with no children yet
    prints no sample, but its HELP and TYPE lines are there.  prometheus_client's
    TYPE line names a counter with its ``_total``; a histogram's family name
    (``ml60_request_latency_seconds``) is no series: PromQL sees only its
    ``_bucket``, ``_sum`` and ``_count``.
    """
    from phase3_production.serving.metrics import ServiceMetrics

    series, families = set(), set()
    for line in ServiceMetrics().render().decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            families.add(name)
            series |= {f"{name}{s}" for s in ("_bucket", "_sum", "_count")} if kind == "histogram" else {name}
    return series, families


def metric_names(text: str) -> set[str]:
    return set(re.findall(r"\bml60_\w+", text))


def test_every_metric_named_exists_in_the_service():
    """Queries must name series; the prose of the annotations may also name a histogram as a whole."""
    series, families = exposed_names()
    assert {"ml60_requests_total", "ml60_request_latency_seconds_bucket", "ml60_ready"} <= series, series
    queried = {"alerts.yml exprs": {m for rule in alert_rules() for m in metric_names(rule["expr"])},
               "grafana-dashboard.json exprs": {m for _, expr in dashboard_exprs() for m in metric_names(expr)}}
    for source, names in queried.items():
        assert names, f"no ml60_ metric found in {source}"
        assert not names - series, f"{source} query series the service does not expose: {names - series}"
    mentioned = metric_names(ALERTS.read_text())
    assert not mentioned - series - families, f"alerts.yml names unknown metrics: {mentioned - series - families}"


# --------------------------------------------------------------------------- the live test


def api(port: int, path: str, **params):
    """GET a Prometheus HTTP API path; the parsed JSON (its ``status`` is "success" or "error")."""
    from phase3_production.http_client import request

    reply = request(port, "GET", path + ("?" + urlencode(params) if params else ""), timeout=10)
    return json.loads(reply.body)


def query(port: int, promql: str) -> list[dict]:
    answer = api(port, "/api/v1/query", query=promql)
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def alerts(port: int, name: str) -> list[dict]:
    return [a for a in api(port, "/api/v1/alerts")["data"]["alerts"] if a["labels"]["alertname"] == name]


def prometheus_ready(port: int) -> bool:
    from phase3_production.http_client import request

    return request(port, "GET", "/-/ready", timeout=2).status == 200


def rules_evaluated_at(port: int) -> float:
    """When the ml60 rule group last ran (Prometheus's own /metrics; 0 before the first evaluation)."""
    from phase3_production.http_client import request

    text = request(port, "GET", "/metrics", timeout=10).body.decode()
    found = re.search(r'^prometheus_rule_group_last_evaluation_timestamp_seconds\{rule_group="[^"]*;ml60"\} (\S+)$',
                      text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def wait_for(condition, timeout_s: float, what: str, process=None, log: Path | None = None):
    """Poll ``condition()`` every 0.2 s until it returns something truthy; return it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            pytest.fail(f"prometheus exited with {process.returncode} while waiting for {what}:\n"
                        f"{log.read_text()[-3000:] if log else ''}")
        try:
            value = condition()
        except OSError:      # not listening yet
            value = None
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def scrape_config(service_port: int, rules: Path) -> str:
    return yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "ml60", "metrics_path": "/metrics",
                            "static_configs": [{"targets": [f"127.0.0.1:{service_port}"]}]}],
    })


def post_images(port: int, images: np.ndarray) -> None:
    from phase3_production.http_client import png_bytes, request

    for image in images:
        reply = request(port, "POST", "/v1/predict", png_bytes(image), {"content-type": "image/png"})
        assert reply.status == 200, reply.body[:300]


# The Grafana variables a panel may use, and a window Prometheus can evaluate in their place.
GRAFANA_VARIABLES = {"$__range": "1m", "$__rate_interval": "1m", "$__interval": "15s"}


@pytest.mark.slow
def test_live_drift_alert_fires_in_a_real_prometheus(model_dir, tmp_path):
    """The real service, a real Prometheus on loopback, the real alerts.yml: quiet on clean traffic, firing on a shift.

    The drift window is 50 requests, checked every 10 (DRIFT_WINDOW, DRIFT_CHECK_EVERY), so that a window
    fills in seconds; the reference statistics of ``model_dir`` come from uniform uint8 noise, so noise is
    "clean" traffic and bright, low-contrast images are a shift.  Prometheus scrapes and evaluates every
    second: the alert must be firing within a few seconds of the shifted window.
    """
    timings = drift_alert_goes_live(model_dir, tmp_path, ALERTS)
    print("live test timings (s since start): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))


def drift_alert_goes_live(model_dir: Path, tmp_path: Path, rules: Path) -> dict[str, float]:
    """The live test's steps, for any rule file (a broken copy must make them fail); returns the timings."""
    from phase3_production.http_client import free_port, wait_until_ready
    from phase3_production.p3_serve import start_server, stop_server

    prometheus = tool("prometheus")
    start = time.perf_counter()
    timings = {}

    def mark(step: str) -> None:
        timings[step] = time.perf_counter() - start

    service_port, prometheus_port = free_port(), free_port()
    assert service_port != prometheus_port
    config = tmp_path / "prometheus.yml"
    config.write_text(scrape_config(service_port, rules.resolve()))
    prometheus_log = tmp_path / "prometheus.log"
    service = start_server(model_dir, service_port, {"DRIFT_WINDOW": "50", "DRIFT_CHECK_EVERY": "10"},
                           tmp_path / "service.log")
    process = None
    try:
        with open(prometheus_log, "wb") as log:
            process = subprocess.Popen([prometheus, f"--config.file={config}",
                                        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                        f"--web.listen-address=127.0.0.1:{prometheus_port}"],
                                       stdout=log, stderr=subprocess.STDOUT)
        wait_until_ready(service_port, process=service)
        mark("service ready")
        wait_for(lambda: prometheus_ready(prometheus_port), 30, "prometheus to be ready", process, prometheus_log)
        mark("prometheus ready")

        rng = np.random.default_rng(7)
        post_images(service_port, rng.integers(0, 256, (60, 3, 32, 32), dtype=np.uint8))
        clean_sent = time.time()
        mark("60 clean images sent")

        # Two scrapes that began after the clean traffic, then a rule evaluation a full interval after them.
        seen: set[float] = set()

        def two_scrapes_after_clean():
            seen.update(float(s["value"][1]) for s in query(prometheus_port, 'timestamp(up{job="ml60"})')
                        if float(s["value"][1]) > clean_sent)
            return len(seen) >= 2

        wait_for(two_scrapes_after_clean, 15, "two scrapes after the clean traffic", process, prometheus_log)
        second_scrape = sorted(seen)[1]
        wait_for(lambda: rules_evaluated_at(prometheus_port) > second_scrape + 1, 15,
                 "a rule evaluation after the second scrape", process, prometheus_log)
        mark("scraped twice and evaluated")
        predictions = query(prometheus_port, "sum(ml60_predictions_total)")
        assert predictions and float(predictions[0]["value"][1]) == 60, predictions
        assert query(prometheus_port, "ml60_drift_p_value"), "no drift check was published on the clean traffic"
        assert [float(s["value"][1]) for s in query(prometheus_port, "ml60_drift_alarm")] == [0.0]
        assert alerts(prometheus_port, "ML60DriftAlarm") == [], "the drift alert fired on clean traffic"

        shifted = (200 + rng.integers(0, 256, (80, 3, 32, 32)) * 0.2).astype(np.uint8)   # bright, low contrast
        post_images(service_port, shifted)
        mark("80 shifted images sent")
        firing = wait_for(lambda: [a for a in alerts(prometheus_port, "ML60DriftAlarm") if a["state"] == "firing"],
                          30, "ML60DriftAlarm to fire", process, prometheus_log)
        mark("drift alert firing")
        assert firing[0]["labels"]["job"] == "ml60" and firing[0]["labels"]["severity"] == "warning", firing

        for title, expr in dashboard_exprs():
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"panel {title!r} uses a Grafana variable this test does not know: {expr}"
            answer = api(prometheus_port, "/api/v1/query", query=expr)
            assert answer["status"] == "success", f"panel {title!r}: Prometheus refused {expr}: {answer}"
        routes = {s["metric"].get("route") for s in query(prometheus_port, dashboard_exprs()[0][1])}
        assert "/v1/predict" in routes, routes
        mark("dashboard queries accepted")
    finally:
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        stop_server(service)
    return timings
