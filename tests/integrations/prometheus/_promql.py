"""
PromQL found in the docs and the Grafana dashboard, and the metric names it selects.

Shared by the unit tests (names only) and the real-Prometheus tests (each query runs).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from resilient import InMemoryRegistry, ServiceView
from resilient.integrations.prometheus import DiscoveryCollector, ResilienceMetrics
from tests._paths import REPO_ROOT

__all__ = ["DASHBOARD", "dashboard_queries", "doc_queries", "exported_names", "metric_names_in"]

DOCS = REPO_ROOT / "docs"
DASHBOARD = DOCS / "grafana-dashboard.json"
_PROMQL_BLOCK = re.compile(r"```promql\n(.*?)```", re.DOTALL)

# Grafana's variables, replaced by what they stand for when Grafana sends the query.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$job": ".*", "$policy": ".*"}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^}]*\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENTIFIER = re.compile(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "inf", "nan", "group_left", "group_right"}
)


def dashboard_queries(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """
    Every (panel title, PromQL) of the dashboard, Grafana variables substituted.
    """
    queries = []
    pending = list(json.loads(path.read_text())["panels"])
    while pending:
        panel = pending.pop(0)
        pending.extend(panel.get("panels", ()))  # rows may hold panels
        for target in panel.get("targets", ()):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries.append((panel["title"], expr))
    return queries


def doc_queries(path: Path = DOCS / "metrics.md") -> list[str]:
    """
    The PromQL examples of docs/metrics.md: a line starts an expression, indented
    lines continue it, ``#`` lines are comments.
    """
    queries: list[str] = []
    for block in _PROMQL_BLOCK.findall(path.read_text()):
        for line in block.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line.startswith(" ") and queries:
                queries[-1] += " " + line.strip()
            else:
                queries.append(line.strip())
    return queries


def metric_names_in(promql: str) -> set[str]:
    """
    The metric names a PromQL expression selects (not functions, labels or keywords).
    """
    text = _STRING.sub('""', promql)
    for pattern in (_MATCHERS, _GROUPING, _RANGE):
        text = pattern.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function call: rate(, histogram_quantile(, max(
        if match.group().lower() not in _KEYWORDS:
            names.add(match.group())
    return names


def exported_names() -> set[str]:
    """
    Every series name the integration exports, read from real collectors.
    """
    registry = CollectorRegistry()
    ResilienceMetrics(registry)
    registry.register(DiscoveryCollector([ServiceView(InMemoryRegistry(), "svc")]))
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
    return {
        family.name + suffix
        for family in registry.collect()
        for suffix in suffixes.get(family.type, [""])
    }
