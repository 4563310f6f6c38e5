"""config/grafana-dashboard.json is a dashboard Grafana imports and whose variables every query honours.

That every query returns data from a real worker is tests/test_prometheus_scrape.py's job.
"""

from __future__ import annotations

import re

from tests.dashboard import dashboard_queries, load_dashboard, metric_names, panels


def test_dashboard_declares_a_prometheus_datasource_variable_and_job_and_instance_variables():
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] == "delivery-worker"
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert variables["instance"]["includeAll"] and variables["instance"]["allValue"] == ".*"
    assert "$job" in variables["instance"]["query"]["query"]


def test_every_panel_and_target_uses_the_datasource_variable_and_fits_the_grid():
    dashboard = load_dashboard()
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(dashboard):
        position = panel["gridPos"]
        assert position["x"] >= 0 and position["x"] + position["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]


def test_every_metric_selector_is_filtered_by_the_job_and_instance_variables():
    for title, expr in dashboard_queries(load_dashboard()):
        assert metric_names(expr), (title, expr)
        for name in metric_names(expr):
            for selector in re.findall(rf"\b{name}(\{{[^}}]*\}})?", expr):
                assert 'job=~"$job"' in selector and 'instance=~"$instance"' in selector, (title, expr)


def test_the_dashboard_has_the_panels_an_sre_needs():
    titles = " | ".join(panel["title"].lower() for panel in panels(load_dashboard()))
    exprs = " ".join(expr for _title, expr in dashboard_queries(load_dashboard()))
    for words in (
        "delivery rate by outcome",
        "failure ratio",
        "end-to-end latency",
        "attempt duration p95 by outcome",
        "due and pending jobs",
        "oldest due job age",
        "retry backlog",
        "failed recently",
        "oldest processing",
        "in flight",
        "circuits open",
        "deferrals by reason",
        "quick retries",
        "database up",
        "last poll age",
        "resident memory",
        "open file descriptors",
        "build",
    ):
        assert words in titles, words
    for quantile in ("0.5", "0.95", "0.99"):
        latency = "sum by (channel_type, le) (rate(delivery_worker_delivery_latency_seconds_bucket"
        assert f"histogram_quantile({quantile}, {latency}" in exprs
