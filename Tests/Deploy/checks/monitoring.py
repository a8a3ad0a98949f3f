"""The monitoring section: the PrometheusRule under promtool (check rules, and test rules with
Tests/Deploy/monitoring/alerts-test.yaml), every alert's for/severity/runbook (a heading that exists in
Deploy/README.md), and the rules and the Grafana dashboard using only the metrics Deploy/README.md's
"Metrics reference" lists."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

from checks.report import Report, ToolMissing, find_tool, run, tool_version

REPO = Path(__file__).resolve().parents[3]
ALERTS_TEST = REPO / "Tests" / "Deploy" / "monitoring" / "alerts-test.yaml"
RULES_FILE_NAME = "conn-reaper-rules.yaml"   # what alerts-test.yaml's rule_files names
RUNBOOKS = "https://github.com/conn-reaper/conn-reaper/blob/main/Deploy/README.md"
SEVERITIES = {"critical", "warning", "info"}
# What the issue asks alerts for: cannot reap, an agent down, the all-down guard holding, a failed
# reload, reaps suppressed for long. A deleted or renamed alert fails here.
REQUIRED_ALERTS = {"ConnReaperCannotReap", "ConnReaperDown", "ConnReaperAllBackendsDownGuard",
                   "ConnReaperReloadFailed", "ConnReaperReapsSuppressed"}
# Prometheus' own per-target series: the only metric the rules may use beyond the agent's.
PROMETHEUS_METRICS = {"up"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# PromQL words that are not metric names: aggregations, functions (always followed by "("), keywords.
PROMQL_KEYWORDS = {"and", "or", "unless", "offset", "bool", "by", "without", "on", "ignoring", "group_left",
                   "group_right", "inf", "nan", "atan2"}


def _yaml():
    try:
        import yaml
    except ImportError as error:
        raise ToolMissing(f"PyYAML is missing: {error}")
    return yaml


def documented_metrics(readme: Path) -> set[str]:
    """The families in the first column of the README's "Metrics reference" table."""
    text = readme.read_text()
    if "## Metrics reference" not in text:
        return set()
    section = text.split("## Metrics reference", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_:][a-z0-9_:]*)`", section, re.M))


def heading_anchors(readme: Path) -> set[str]:
    """GitHub's anchors for the Markdown headings (fenced code skipped): lower case, punctuation
    dropped, spaces to hyphens; a repeated heading gets -1, -2, ..."""
    anchors: set[str] = set()
    fenced = False
    for line in readme.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
        candidate, number = slug, 0
        while candidate in anchors:
            number += 1
            candidate = f"{slug}-{number}"
        anchors.add(candidate)
    return anchors


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana label_values query) selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)                   # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)                               # matchers
    text = re.sub(r"label_values\(\s*([^,)]*)[^)]*\)", r"\1", text)      # label_values(METRIC, label)
    text = re.sub(r"\[[^\]]*\]", " ", text)                              # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)   # label lists
    text = re.sub(r"\$\{?\w+\}?", " ", text)                             # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in PROMQL_KEYWORDS or re.fullmatch(r"\d+[smhdwy]", word):
            continue
        names.add(word)
    return names


def undocumented(names: set[str], documented: set[str]) -> set[str]:
    def known(name: str) -> bool:
        return name in documented or any(name.endswith(s) and name.removesuffix(s) in documented
                                         for s in HISTOGRAM_SUFFIXES)
    return {name for name in names if not known(name)}


def check_rules(report: Report, rule: dict, readme: Path, documented: set[str]) -> list[dict]:
    alerts = [r for group in rule["spec"]["groups"] for r in group["rules"] if "alert" in r]
    names = {a["alert"] for a in alerts}
    report.check(REQUIRED_ALERTS <= names, "the PrometheusRule has the alerts the issue asks for",
                 f"missing {sorted(REQUIRED_ALERTS - names)}")
    anchors = heading_anchors(readme)
    section = readme.read_text().split("## Alerts and runbooks", 1)[-1].split("\n## ", 1)[0]
    tabled = set(re.findall(r"^\| \[(\w+)\]\(#", section, re.M))
    report.check(tabled == names, f"{readme.name}'s alerts table lists exactly the PrometheusRule's alerts",
                 f"only in the rule: {sorted(names - tabled)}, only in the table: {sorted(tabled - names)}")
    for alert in alerts:
        name = alert["alert"]
        labels, annotations = alert.get("labels") or {}, alert.get("annotations") or {}
        report.check(bool(alert.get("for")), f"{name} has for: ({alert.get('for')})")
        report.check(labels.get("severity") in SEVERITIES, f"{name} has a severity ({labels.get('severity')})")
        report.check(bool(annotations.get("summary")) and bool(annotations.get("description")),
                     f"{name} has a summary and a description")
        url = annotations.get("runbook_url", "")
        base, _, anchor = url.partition("#")
        report.check(base == RUNBOOKS and anchor in anchors,
                     f"{name} runbook_url points at a heading of {readme.name} (#{anchor})",
                     f"{url}: headings {sorted(a for a in anchors if 'reaper' in a)}")
        unknown = undocumented(metric_names(alert["expr"]), documented | PROMETHEUS_METRICS)
        report.check(not unknown, f"{name} uses only metrics the Metrics reference lists", f"not listed: {sorted(unknown)}")
    return alerts


def check_alert_tests(report: Report, alerts: list[dict], test_file: Path) -> None:
    """Each alert has a case where it fires and one where it stays silent."""
    tests = _yaml().safe_load(test_file.read_text())
    cases = [case for test in tests.get("tests") or [] for case in test.get("alert_rule_test") or []]
    for name in sorted({a["alert"] for a in alerts}):
        firing = [c for c in cases if c.get("alertname") == name and c.get("exp_alerts")]
        silent = [c for c in cases if c.get("alertname") == name and not c.get("exp_alerts")]
        report.check(bool(firing) and bool(silent), f"{test_file.name} proves {name} fires and stays silent",
                     f"{len(firing)} firing case(s), {len(silent)} silent case(s)")


def check_promtool(report: Report, rule: dict, test_file: Path) -> None:
    promtool = find_tool("promtool")
    report.note(tool_version([promtool, "--version"]))
    directory = Path(tempfile.mkdtemp(prefix="conn-reaper-rules-"))
    try:
        rules_file = directory / RULES_FILE_NAME
        rules_file.write_text(_yaml().safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
        result = run([promtool, "check", "rules", str(rules_file)])
        report.check(result.returncode == 0, "promtool check rules accepts the PrometheusRule's groups",
                     (result.stdout + result.stderr).strip())
        shutil.copy(test_file, directory / test_file.name)
        result = run([promtool, "test", "rules", str(directory / test_file.name)])
        report.check(result.returncode == 0 and "SUCCESS" in result.stdout,
                     f"promtool test rules {test_file.relative_to(REPO)} passes", (result.stdout + result.stderr).strip())
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, query) for every panel target, in rows too, and every query variable."""
    queries = []

    def walk(panels):
        for panel in panels or []:
            for target in panel.get("targets") or []:
                queries.append((f"panel '{panel.get('title')}'", target.get("expr", "")))
            walk(panel.get("panels"))
    walk(dashboard.get("panels"))
    for variable in (dashboard.get("templating") or {}).get("list") or []:
        if variable.get("type") == "query":
            query = variable.get("query")
            queries.append((f"variable ${variable.get('name')}", query.get("query", "") if isinstance(query, dict) else query or ""))
    return queries


def check_dashboard(report: Report, path: Path, documented: set[str]) -> None:
    where = path.name
    try:
        dashboard = json.loads(path.read_text())
    except ValueError as error:
        report.fail(f"{where} is JSON", str(error))
        return
    report.check(bool(dashboard.get("uid")) and bool(dashboard.get("title")) and bool(dashboard.get("panels")),
                 f"{where} is a Grafana dashboard (uid, title, panels)")
    queries = dashboard_queries(dashboard)
    empty = [w for w, q in queries if not q.strip()]
    report.check(queries and not empty, f"{where}: every panel target has a query ({len(queries)})", str(empty))
    used: set[str] = set()
    for where_in, query in queries:
        names = metric_names(query)
        used |= names
        unknown = undocumented(names, documented)
        report.check(bool(names) and not unknown, f"{where}: {where_in} uses only metrics the Metrics reference lists",
                     f"{query}: not listed {sorted(unknown)}" if names else f"{query}: selects no metric")
    report.note(f"{where} uses {len(used)} metrics: {', '.join(sorted(used))}")


def section_monitoring(report: Report, deploy: Path) -> None:
    monitoring = deploy / "kubernetes" / "monitoring"
    readme = deploy / "README.md"
    documented = documented_metrics(readme)
    if not report.check(len(documented) >= 10, f"{readme.name} lists the metrics (Metrics reference: {len(documented)})"):
        return
    rules = [d for d in _yaml().safe_load_all((monitoring / "prometheusrule.yaml").read_text())
             if d and d.get("kind") == "PrometheusRule"]
    if not report.check(len(rules) == 1, "monitoring/prometheusrule.yaml holds one PrometheusRule"):
        return
    check_promtool(report, rules[0], ALERTS_TEST)
    alerts = check_rules(report, rules[0], readme, documented)
    check_alert_tests(report, alerts, ALERTS_TEST)
    dashboards = sorted(monitoring.glob("*.json"))
    report.check(bool(dashboards), "monitoring/ has a Grafana dashboard")
    for path in dashboards:
        check_dashboard(report, path, documented)
