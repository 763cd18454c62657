"""The alerting rules and the Grafana dashboard: promtool's checks, and only exported metrics named."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "alerts" / "platform.rules.yml"
RULE_TESTS = ROOT / "alerts" / "platform.test.yml"
DASHBOARD = ROOT / "dashboards" / "platform.json"

# Every series the platform exports, as Prometheus names them (Ray prefixes `ray_`); the
# histogram appears as its three series.
EXPORTED = frozenset(
    {
        "ray_subsystem_healthy",
        "ray_subsystem_seconds_since_tick",
        "ray_subsystem_restarts",
        "ray_subsystem_quarantined_items",
        "ray_scheduler_fires_total",
        "ray_scheduler_fire_lateness_seconds_bucket",
        "ray_scheduler_fire_lateness_seconds_sum",
        "ray_scheduler_fire_lateness_seconds_count",
        "ray_events_appended_total",
        "ray_events_delivered_total",
        "ray_websocket_clients",
        "ray_channel_messages_total",
        "ray_workspace_offline_transitions_total",
        "ray_broadcaster_lag_events",
        "ray_broadcaster_lag_seconds",
    }
)

ALERT_NAMES = ("SubsystemUnhealthy", "SubsystemRestarting", "SchedulerLateP99", "BroadcasterLagGrowing")


# --- reading the rules and the dashboard (other tests import these) -------------------------


def rule_expressions(path: Path = RULES) -> list[str]:
    """Every rule's `expr` (alerting and recording), in file order."""
    groups = yaml.safe_load(path.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def _panels(panels: list[dict]) -> Iterator[dict]:
    """Each panel, and the panels inside (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_expressions(path: Path = DASHBOARD) -> list[str]:
    """Every panel query's `expr` in the dashboard, rows included, in panel order."""
    dashboard = json.loads(path.read_text())
    return [
        target["expr"]
        for panel in _panels(dashboard["panels"])
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


_QUOTED = r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`'
_NAME_MATCHER = re.compile(rf"__name__\s*=\s*({_QUOTED})")
_STRING = re.compile(_QUOTED)
# Grafana's variables: ${name}, $name, [[name]] (they stand for durations or label values).
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]")
_LABEL_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")  # ranges and subqueries: durations only
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.IGNORECASE)
# A number or duration (1, 0.99, 1e3, 0x1f, 5m, 1h30m) is one token, so its letters are no name;
# a name followed by `(` is a function or an aggregation.
_TOKEN = re.compile(r"(?P<number>(?:\d|\.\d)[\w.]*)|(?P<name>[A-Za-z_:][\w:]*)(?P<call>\s*\()?")
_KEYWORDS = frozenset("and or unless by without on ignoring group_left group_right bool offset inf nan".split())


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects, exactly as written (`_bucket` stays).

    Everything else is left out: functions and aggregations, keywords (by, without, on,
    ignoring, group_left, group_right, bool, and, or, unless, offset), label names and values
    inside `{...}` and grouping lists, numbers, durations, strings and Grafana variables.
    A `{__name__="..."}` selector counts by its name.
    """
    names = {match.group(1)[1:-1] for match in _NAME_MATCHER.finditer(expr)}
    text = _STRING.sub(" ", expr)
    text = _GRAFANA_VARIABLE.sub(" ", text)
    text = _LABEL_MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    for token in _TOKEN.finditer(text):
        name = token.group("name")
        if name and not token.group("call") and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


# --- promtool ----------------------------------------------------------------------------


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool; fail the test, naming the package that provides it, if it is not installed."""
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool not found on PATH: install Debian's `prometheus` package (apt-get install prometheus)")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120, check=False)


def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in result.stdout


def test_rules_pass_their_unit_tests() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("alert", ALERT_NAMES)
def test_unit_tests_catch_an_alert_that_fires_early(alert: str, tmp_path: Path) -> None:
    # The unit tests check every alert just before its `for` runs out: without the `for`,
    # the alert fires there and promtool must say so.
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                rule["for"] = "0s"
    (tmp_path / RULES.name).write_text(yaml.safe_dump(rules, sort_keys=False))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = promtool("test", "rules", str(tmp_path / RULE_TESTS.name))
    assert result.returncode != 0, result.stdout + result.stderr
    assert f"alertname: {alert}" in result.stdout + result.stderr


def test_missing_promtool_fails_naming_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match="`prometheus` package"):
        promtool("--version")


def test_dashboard_expressions_parse(tmp_path: Path) -> None:
    # promtool parses PromQL only inside rule files: each panel query becomes a recording rule,
    # with Grafana's $__rate_interval replaced by a duration.
    rules = [
        {"record": f"dashboard_query_{index}", "expr": expr.replace("$__rate_interval", "5m")}
        for index, expr in enumerate(dashboard_expressions())
    ]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# --- what the rules and the dashboard say ------------------------------------------------


def test_every_alert_is_labelled_annotated_and_unit_tested() -> None:
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    assert [rule["alert"] for rule in rules] == list(ALERT_NAMES)
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        for annotation in ("summary", "description"):
            assert "{{ $labels.subsystem }}" in rule["annotations"][annotation], (rule["alert"], annotation)
    cases = [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    assert {case["alertname"] for case in cases if case["exp_alerts"]} == set(ALERT_NAMES)  # seen firing
    assert {case["alertname"] for case in cases if not case["exp_alerts"]} == set(ALERT_NAMES)  # and quiet


def test_expressions_name_only_exported_metrics() -> None:
    expressions = rule_expressions() + dashboard_expressions()
    assert len(expressions) > len(ALERT_NAMES)
    for expr in expressions:
        names = metric_names(expr)
        assert names, expr
        assert names <= EXPORTED, (expr, names - EXPORTED)


def test_dashboard_shows_every_exported_metric() -> None:
    shown = set().union(*(metric_names(expr) for expr in dashboard_expressions()))
    assert shown == EXPORTED


def test_dashboard_is_importable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] == "Platform subsystems"
    assert dashboard["uid"] == "platform-subsystems"
    assert dashboard["schemaVersion"] == 39
    assert dashboard["id"] is None  # Grafana assigns it on import
    [variable] = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == ("datasource", "datasource", "prometheus")
    panels = list(_panels(dashboard["panels"]))
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            "histogram_quantile(0.99, sum by (le) (rate(ray_scheduler_fire_lateness_seconds_bucket[5m]))) > 5",
            {"ray_scheduler_fire_lateness_seconds_bucket"},
        ),
        (
            'histogram_quantile(0.5, sum(rate(ray_scheduler_fire_lateness_seconds_bucket{subsystem=~"sched.*"}'
            "[$__rate_interval])) by (subsystem, le))",
            {"ray_scheduler_fire_lateness_seconds_bucket"},
        ),
        (
            "deriv(max by (subsystem) (ray_broadcaster_lag_events)[5m:30s]) > 0"
            " and max by (subsystem) (ray_broadcaster_lag_events) > 100",
            {"ray_broadcaster_lag_events"},
        ),
        (
            "sum without (WorkerId, NodeAddress) (rate(ray_scheduler_fire_lateness_seconds_sum[1h30m] offset 5m))"
            " / on (subsystem) group_left (reason) sum by (subsystem) (rate(ray_scheduler_fire_lateness_seconds_count"
            "[1h30m] offset 5m))",
            {"ray_scheduler_fire_lateness_seconds_sum", "ray_scheduler_fire_lateness_seconds_count"},
        ),
        (
            "ray_subsystem_healthy{subsystem!=\"api\", reason=~'exception|stalled'} == bool 0"
            " unless ignoring(reason) ray_subsystem_restarts > 1e3 or ray_websocket_clients > 0x10",
            {"ray_subsystem_healthy", "ray_subsystem_restarts", "ray_websocket_clients"},
        ),
        (
            'label_replace({__name__="ray_events_appended_total", subsystem="api"}, "tenant", "$1",'
            ' "subsystem", "(.*)") * on () group_right vector(1) + Inf',
            {"ray_events_appended_total"},
        ),
    ],
    ids=["histogram", "grafana-variable", "subquery-and", "offset-group-left", "bool-unless-or", "name-matcher"],
)
def test_metric_names_finds_exactly_the_series(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names
