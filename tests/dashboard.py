"""Reading config/grafana-dashboard.json and config/prometheus-rules.yml the way the tests need them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

CONFIG = Path(__file__).resolve().parent.parent / "config"
DASHBOARD = CONFIG / "grafana-dashboard.json"
RULES = CONFIG / "prometheus-rules.yml"

# PromQL words that look like metric names but are not (functions, keywords, aggregations).
_NOT_METRICS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool"}
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def load_dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every panel target."""
    found = []
    for panel in panels(dashboard):
        found += [(panel["title"], target["expr"]) for target in panel.get("targets", [])]
    return found


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Grafana's variables in an expression: ``$name`` and ``${name}``, longest names first."""
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", variables[name]).replace("$" + name, variables[name])
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def rule_expressions() -> dict[str, str]:
    """Alert (or record) name -> expression, from the shipped rules file; severity keeps names apart."""
    found = {}
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule["record"]
            found[f"{name}/{rule.get('labels', {}).get('severity', '')}"] = rule["expr"]
    return found


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers not followed by '(' (functions), outside
    braces, strings and brackets (label matchers, durations), minus PromQL keywords."""
    text = re.sub(r'"[^"]*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "{}", text)
    text = re.sub(r"\[[^\]]*\]", "[]", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in _NAME.finditer(text):
        rest = text[match.end() :].lstrip()
        word = match.group()
        if rest.startswith("(") or word in _NOT_METRICS or word[0].isdigit():
            continue
        if match.start() > 0 and (text[match.start() - 1].isdigit() or text[match.start() - 1] == "."):
            continue  # the tail of a number such as 1e3
        names.add(word)
    return names
