"""Grafana dashboards without Grafana: run a dashboard's panel queries against a real Prometheus
the way Grafana would (its variables substituted), and draw the results on Grafana's 24-column
grid with matplotlib. Tests use the first to prove every panel returns data; the docs' pictures
come from the second.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

Series = list[dict[str, Any]]
PanelData = dict[str, list[tuple[str, Series]]]  # panel title -> [(legend format, result series)]

_VAR = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    """Replace Grafana's ``$name`` / ``${name}`` variables; an unknown one is an error (a query
    Grafana would send with a variable left in would fail there too)."""

    def one(m: re.Match[str]) -> str:
        # "$1" (a label_replace back-reference) never matches: names start with a letter.
        if m.group(1) not in variables:
            raise KeyError(f"no value for Grafana variable ${m.group(1)} in {expr}")
        return variables[m.group(1)]

    return _VAR.sub(one, expr)


def query_panels(
    prometheus: str,
    dashboard: Mapping[str, Any],
    start: float,
    end: float,
    variables: Mapping[str, str],
    step: str = "15s",
) -> PanelData:
    """Every panel's targets as range queries over [start, end]."""
    out: PanelData = {}
    with httpx.Client(timeout=30) as client:
        for panel in dashboard["panels"]:
            results = []
            for target in panel["targets"]:
                r = client.get(
                    f"{prometheus}/api/v1/query_range",
                    params={
                        "query": substitute(target["expr"], variables),
                        "start": start,
                        "end": end,
                        "step": step,
                    },
                )
                body = r.json()
                if body.get("status") != "success":
                    raise AssertionError(f"{panel['title']}: {target['expr']}: {body}")
                results.append((str(target.get("legendFormat", "")), list(body["data"]["result"])))
            out[panel["title"]] = results
    return out


def has_data(series: Series) -> bool:
    """At least one finite sample (histogram_quantile of an idle window gives NaN: not data)."""
    return any(math.isfinite(float(v)) for s in series for _, v in s["values"])


def empty_panels(data: PanelData) -> list[str]:
    return [title for title, targets in data.items() if not any(has_data(s) for _, s in targets)]


def _legend(fmt: str, metric: Mapping[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt) or str(dict(metric))


def render_png(dashboard: Mapping[str, Any], data: PanelData, path: Path, subtitle: str, t0: float) -> Path:
    """Draw every panel where Grafana would put it; stat panels show their last value (or the
    series name, for panels in "name" text mode)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = dashboard["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    fig = plt.figure(figsize=(18, rows * 0.5 + 1))
    fig.suptitle(f"{dashboard['title']}: {subtitle}", fontsize=12)
    top = 0.94  # room for the title
    span = (
        max(
            (float(t) for ts in data.values() for _, ss in ts for s in ss for t, _ in s["values"]), default=t0
        )
        - t0
    )
    scale, unit = (60.0, "minutes") if span > 600 else (1.0, "seconds")
    for panel in panels:
        g = panel["gridPos"]
        ax = fig.add_axes(
            (
                g["x"] / 24 + 0.035,
                top - (g["y"] + g["h"]) / rows * top + 0.035,
                g["w"] / 24 - 0.05,
                g["h"] / rows * top - 0.075,
            )
        )
        ax.set_title(panel["title"], fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
        targets = data.get(panel["title"], [])
        if panel["type"] == "stat":
            name_mode = panel.get("options", {}).get("textMode") in ("name", "value_and_name")
            shown = []
            for legend, series in targets:
                for s in series:
                    values = [float(v) for _, v in s["values"] if math.isfinite(float(v))]
                    if values:
                        label = _legend(legend, s["metric"])
                        shown.append(
                            f"{label}: {values[-1]:.3g}"
                            if name_mode and panel["options"]["textMode"] == "value_and_name"
                            else label
                            if name_mode
                            else f"{values[-1]:.3g}"
                        )
            ax.text(
                0.5,
                0.45,
                "\n".join(shown) or "no data",
                ha="center",
                va="center",
                fontsize=16 if len(shown) < 2 else 10,
            )
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        for legend, series in targets:
            for s in series:
                xs = [(float(t) - t0) / scale for t, _ in s["values"]]
                ys = [float(v) for _, v in s["values"]]
                label = _legend(legend, s["metric"])
                dashed = label in ("SLO", "high watermark")
                ax.plot(xs, ys, label=label, linewidth=1.2, linestyle="--" if dashed else "-")
        ax.set_xlabel(unit, fontsize=7)
        if ax.lines:
            ax.legend(fontsize=7, loc="upper left")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
