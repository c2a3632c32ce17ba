"""Which metrics a PromQL expression reads, so tests can hold dashboards and alert rules to the
metric names our code exports (livetranslate.metrics) and the external ones API.md lists.

Not a full PromQL parser: it removes what cannot be a metric name (strings, label matchers, range
and subquery brackets, grouping clauses, function calls, keywords, numbers, Grafana variables)
and returns the identifiers left. That is exact for the expression shapes dashboards and alert
rules use, and errs towards reporting too much (a false name fails a test loudly).
"""

from __future__ import annotations

import re

from livetranslate import metrics

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_FUNCTION = re.compile(r"\b([a-zA-Z_][a-zA-Z0-9_]*)\s*\(")
_VARIABLE = re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?")
_DURATION = re.compile(r"\b\d+(\.\d+)?(ms|s|m|h|d|w|y)\b")
_NUMBER = re.compile(r"\b\d+(\.\d+)?([eE][-+]?\d+)?\b")
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "inf",
        "nan",
        "atan2",
        "start",
        "end",
    }
)
_HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum", "_created")


def metric_names(expr: str) -> set[str]:
    """Names of the series ``expr`` selects (as written, histogram suffixes kept)."""
    text = _STRING.sub(" ", expr)
    text = _VARIABLE.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = _BRACKETS.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _FUNCTION.sub(" (", text)
    text = _DURATION.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    return {name for name in _IDENT.findall(text) if name.lower() not in _KEYWORDS}


def base_name(name: str) -> str:
    """A histogram/summary series name without its _bucket/_count/_sum suffix."""
    for suffix in _HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def exported_metric_names() -> set[str]:
    """Every metric name LiveTranslate itself exports (the constants of livetranslate.metrics)."""
    return {
        value
        for key, value in vars(metrics).items()
        if key.isupper() and isinstance(value, str) and value.startswith("livetranslate_")
    }


def unknown_metrics(expr: str, extra: frozenset[str] | set[str] = frozenset()) -> set[str]:
    """Names in ``expr`` that are neither ours, nor listed external, nor in ``extra``."""
    known = exported_metric_names() | set(metrics.EXTERNAL_METRICS) | set(extra)
    return {n for n in metric_names(expr) if n not in known and base_name(n) not in known}
