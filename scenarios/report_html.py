"""A rehearsal's results as one self-contained HTML page: charts, calibration, plans.

``render_report`` takes one ``results.json`` (``pasarela run``) or several
(``pasarela compare``, plans overlaid) and returns a page with everything inline: the
charts are matplotlib SVG, the stylesheet is a ``<style>`` block, nothing is fetched (a
Content-Security-Policy forbids it). The same results give the same bytes: no wall clock
apart from the ``run`` block's figures, stable SVG ids, no date in the SVG metadata.
"""

from __future__ import annotations

import datetime as dt
import io
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import matplotlib as mpl
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

import pasarela
from scenarios.compare import summarise

__all__ = ["render_report", "write_report"]

Runs = Sequence[tuple[str, Mapping[str, Any]]]

#: The source report's counts of central agencies on the portal (U4 Report 2015:2).
REPORT_POINTS = (
    (dt.date(2015, 5, 31), 14, "report, May 2015", "o"),
    (dt.date(2015, 7, 31), 52, "report, July 2015", "s"),
)
TARGET = 225
PALETTE = ("#1f5f99", "#d1682b", "#3c8d5a", "#8a4fa3", "#b8912a", "#4b5563")
INK, MUTED, ALARM = "#1f2933", "#6b7280", "#b42318"
EPOCH = dt.date(1970, 1, 1)
CHART_STYLE: dict[Any, Any] = {  # keys are matplotlib.typing.RcKeyType (not in 3.8)
    "date.epoch": "1970-01-01T00:00:00",
    "date.converter": "concise",
    "svg.fonttype": "none",  # text stays text: searchable, selectable, small
    "font.sans-serif": ["DejaVu Sans", "Liberation Sans", "Arial"],
    "font.size": 9.0,
    "axes.edgecolor": "#9ca3af",
    "text.color": INK,
    "axes.titlecolor": INK,
    "axes.titlesize": 10.0,
    "axes.titlelocation": "left",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#e5e7eb",
    "xtick.color": MUTED,
    "ytick.color": MUTED,
    "legend.frameon": False,
    "legend.fontsize": 8.5,
}


def _day(value: str | dt.date) -> float:
    """Matplotlib's date number: days since the epoch that CHART_STYLE pins."""
    day = value if isinstance(value, dt.date) else dt.date.fromisoformat(value)
    return float((day - EPOCH).days)


def _events(results: Mapping[str, Any], kind: str) -> list[Mapping[str, Any]]:
    return [e for e in results["timeline"] if e["event"] == kind]


def _incidents(runs: Runs) -> list[str]:
    return sorted({e["date"] for _, r in runs for e in _events(r, "disconnect-all")})


def _incident(ax: Axes, runs: Runs, *, label: bool) -> None:
    for i, day in enumerate(_incidents(runs)):
        name = "mass disconnection" if label and i == 0 else None
        ax.axvline(_day(day), color=ALARM, linestyle=":", linewidth=1.3, label=name)


def _plans(runs: Runs) -> Iterable[tuple[str, Mapping[str, Any], str, list[float]]]:
    """Per run: its label ("" alone, so legends stay short), results, colour, x values."""
    for i, (label, results) in enumerate(runs):
        x = [_day(d) for d in results["daily"]["dates"]]
        yield (label if len(runs) > 1 else ""), results, PALETTE[i % len(PALETTE)], x


def _span(runs: Runs) -> tuple[dt.date, dt.date]:
    first = min(dt.date.fromisoformat(r["daily"]["dates"][0]) for _, r in runs)
    return first, max(dt.date.fromisoformat(r["daily"]["dates"][-1]) for _, r in runs)


def _draw_connected(ax: Axes, runs: Runs, *, labels: bool) -> None:
    for label, results, colour, x in _plans(runs):
        daily, prefix = results["daily"], f"{label}: " if label else ""
        gateway, direct = daily["central_connected"], daily["central_direct"]
        both = [a + b for a, b in zip(gateway, direct, strict=True)]
        name = f"{prefix}connected through the gateway" if labels else None
        ax.plot(x, gateway, color=colour, linewidth=1.9, label=name)
        name = f"{prefix}connected + direct fallback" if labels else None
        ax.plot(x, both, color=colour, linewidth=1.4, linestyle="--", label=name)
    first, last = _span(runs)
    for day, value, name, marker in REPORT_POINTS:
        if first <= day <= last:
            shown = name if labels else None
            ax.plot(_day(day), value, marker, color=INK, ms=8, mfc="white", mew=1.8, label=shown)
    target = f"target {TARGET}" if labels else None
    ax.axhline(TARGET, color=MUTED, linestyle="-.", linewidth=1.1, label=target)
    _incident(ax, runs, label=labels)
    ax.set_ylim(0, TARGET * 1.1)
    ax.xaxis_date()


def _chart_connected(runs: Runs) -> Figure:
    """The whole span and, when there was an incident, the months after it beside it."""
    fig = Figure(figsize=(10, 4.8), layout="constrained")
    incidents, (first, last) = _incidents(runs), _span(runs)
    if incidents:
        whole, after = fig.subplots(1, 2, sharey=True, width_ratios=(2, 3))
        ticks = [dt.date(y, m, 1) for y in range(first.year, last.year + 1) for m in (1, 7)]
        whole.set_xticks([_day(t) for t in ticks if first <= t <= last])
        after.set_xlim(_day(incidents[0]) - 10, _day(last) + 10)
        after.set_title("after the mass disconnection")
        _draw_connected(whole, runs, labels=False)
        _draw_connected(after, runs, labels=True)
    else:
        whole = fig.add_subplot()
        _draw_connected(whole, runs, labels=True)
    whole.set_title("Central agencies on the portal")
    fig.legend(loc="outside lower center", ncols=3)
    return fig


def _chart_backlog(runs: Runs) -> Figure:
    fig = Figure(figsize=(10, 5.4), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    for label, results, colour, x in _plans(runs):
        daily = results["daily"]
        top.plot(x, daily["backlog"], color=colour, linewidth=1.7, label=label or None)
        bottom.plot(x, daily["deadline_breaches_cumulative"], color=colour, linewidth=1.7)
    top.set_title("ATI backlog: requests waiting for an unreachable agency")
    bottom.set_title("Deadline breaches, cumulative")
    for ax in (top, bottom):
        _incident(ax, runs, label=ax is top)
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_formatter("{x:,.0f}")
    bottom.xaxis_date()
    top.legend(loc="upper left")
    return fig


@dataclass(frozen=True, slots=True, kw_only=True)
class _GanttRow:
    """One row of the waves chart: a wave, the direct fallback, or one fault's windows."""

    name: str
    text: str  # written after the row's last mark
    kind: str  # "wave", "fallback" or "fault"
    bars: tuple[tuple[float, float], ...] = ()  # (start, stop) day numbers
    soak: tuple[float, float] | None = None  # last connection to the gate's pass
    passed: tuple[float, ...] = ()  # gate evaluations that passed
    failed: tuple[float, ...] = ()  # gate evaluations that failed
    planned: float | None = None  # the planned start, when the wave started another day
    at: float = 0.0  # where the text goes


def _moment(value: str) -> float:
    """Matplotlib's date number of an ISO date or date-time (wall time; an offset is dropped)."""
    moment = dt.datetime.fromisoformat(value).replace(tzinfo=None)
    return (moment - dt.datetime(1970, 1, 1)).total_seconds() / 86_400


def _wave_row(wave: str, figures: Mapping[str, Any], end: float) -> _GanttRow:
    gate = figures.get("gate") or {}
    evaluations = gate.get("evaluations", [])
    passed = tuple(_day(e["date"]) for e in evaluations if e["passed"])
    failed = tuple(_day(e["date"]) for e in evaluations if not e["passed"])
    text = f"{figures['connected']}/{figures['agencies']}"
    for key, what in (("quarantined", "quarantined"), ("fell_back", "fell back")):
        if figures.get(key):
            text += f" \N{MIDDLE DOT} {len(figures[key])} {what}"
    planned = None if figures.get("planned_start") is None else _day(figures["planned_start"])
    if figures["start"] is None:  # held: a gate before it never passed
        at = end if planned is None else planned
        return _GanttRow(name=wave, text="not started", kind="wave", planned=planned, at=at)
    start, last = _day(figures["start"]), figures["last_connected"]
    stop = end if last is None else max(_day(last), start + 1)
    soak = None
    if gate and last is not None:
        gate_end = gate.get("passed") or (evaluations[-1]["date"] if evaluations else None)
        soak_stop = end if gate_end is None else _day(gate_end)
        soak = (stop, soak_stop) if soak_stop > stop else None
    marks = [stop, *passed, *failed, *(soak[1:] if soak else ())]
    return _GanttRow(
        name=wave,
        text=text,
        kind="wave",
        bars=((start, stop),),
        soak=soak,
        passed=passed,
        failed=failed,
        planned=None if planned == start else planned,
        at=max(marks),
    )


#: A fault shorter than this is drawn this wide, so an hour's fault still shows.
MIN_FAULT_DAYS = 1.0


def _fault_rows(results: Mapping[str, Any], end: float) -> list[_GanttRow]:
    """One row per faulted kind and target, with every window of it."""
    grouped: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for fault in results.get("faults") or ():
        grouped.setdefault((fault["kind"], fault["target"] or ""), []).append(fault)
    rows = []
    for (kind, target), faults in grouped.items():
        bars = []
        for fault in faults:
            start = _moment(fault["start"])
            stop = end if fault["end"] is None else _moment(fault["end"])
            bars.append((start, max(stop, start + MIN_FAULT_DAYS)))
        affected = sum(int(f.get("affected", 0)) for f in faults)
        name = f"fault: {kind} {target}".strip()
        text = f"{affected:,} affected"
        rows.append(_GanttRow(name=name, text=text, kind="fault", bars=tuple(bars), at=bars[-1][1]))
    return rows


def _gantt_rows(results: Mapping[str, Any]) -> list[_GanttRow]:
    """The waves, then the fallback (open to the end), then the injected faults."""
    end, named = _day(results["scenario"]["end"]), 0
    rows = []
    for wave, figures in results["agencies"]["waves"].items():
        rows.append(_wave_row(wave, figures, end))
        named += figures["agencies"]
    fallback = results["plan"]["agencies"] - named
    for event in _events(results, "fallback"):
        text, bars = f"{event['agencies']}/{fallback} direct", ((_day(event["date"]), end),)
        rows.append(
            _GanttRow(name="direct fallback", text=text, kind="fallback", bars=bars, at=end)
        )
    return rows + _fault_rows(results, end)


#: How the waves chart draws a gate evaluation that passed, one that failed, and the day a
#: wave was planned to start (matplotlib line properties, shared with the legend's entries).
GATE_PASSED: dict[str, Any] = {
    "marker": "o",
    "ms": 8,
    "color": "#1e6b3a",
    "mec": "white",
    "mew": 0.8,
}
GATE_FAILED: dict[str, Any] = {"marker": "X", "ms": 8, "color": ALARM, "mec": "white", "mew": 0.8}
PLANNED: dict[str, Any] = {"marker": "|", "ms": 13, "color": MUTED, "mew": 1.6}
HATCH = "////"


def _draw_row(ax: Axes, y: int, row: _GanttRow, colour: str) -> None:
    for start, stop in row.bars:
        if row.kind == "fault":
            style: dict[str, Any] = {"facecolor": "none", "edgecolor": colour, "hatch": HATCH}
            ax.barh(y, stop - start, left=start, height=0.5, linewidth=0.8, **style)
        else:
            alpha = 0.4 if row.kind == "fallback" else 0.95
            ax.barh(y, stop - start, left=start, height=0.62, color=colour, alpha=alpha)
    if row.soak is not None:
        start, stop = row.soak
        ax.barh(y, stop - start, left=start, height=0.62, color=colour, alpha=0.28)
    if row.planned is not None:
        ax.plot(row.planned, y, **PLANNED)
    for days, mark in ((row.passed, GATE_PASSED), (row.failed, GATE_FAILED)):
        if days:
            ax.plot(days, [y] * len(days), linestyle="none", zorder=3, **mark)
    ax.annotate(row.text, (row.at, y), xytext=(6, 0), textcoords="offset points", va="center")


def _waves_legend(rows: Sequence[_GanttRow]) -> list[Artist]:
    """A legend entry for each kind of mark the chart holds (none for plain bars)."""
    handles: list[Artist] = []
    if any(r.soak for r in rows):
        handles.append(Patch(color=MUTED, alpha=0.3, label="soak: last connection to gate pass"))
    for present, mark, name in (
        (any(r.passed for r in rows), GATE_PASSED, "gate passed"),
        (any(r.failed for r in rows), GATE_FAILED, "gate failed"),
        (any(r.planned is not None for r in rows), PLANNED, "planned start"),
    ):
        if present:
            handles.append(Line2D([], [], linestyle="none", label=name, **mark))
    if any(r.kind == "fault" for r in rows):
        handles.append(Patch(facecolor="none", edgecolor=INK, hatch=HATCH, label="fault window"))
    return handles


def _chart_waves(runs: Runs) -> Figure:
    rows = [(label, colour, row) for label, r, colour, _ in _plans(runs) for row in _gantt_rows(r)]
    handles = _waves_legend([row for *_, row in rows])
    height = 1.2 + 0.45 * max(len(rows), 1) + (0.4 if handles else 0.0)
    fig = Figure(figsize=(10, height), layout="constrained")
    ax = fig.add_subplot()
    for y, (_, colour, row) in enumerate(rows):
        _draw_row(ax, y, row, colour)
    _incident(ax, runs, label=False)
    names = [f"{label} \N{MIDDLE DOT} {row.name}" if label else row.name for label, _, row in rows]
    ax.set_yticks(range(len(rows)), names)
    ax.set_ylim(len(rows) - 0.4, -0.6)
    ax.grid(axis="y", visible=False)
    ax.margins(x=0.1)
    ax.set_title("Reconnection plan: waves, gates and fallback")
    ax.xaxis_date()
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5))
    return fig


CHARTS: tuple[tuple[str, Callable[[Runs], Figure], str], ...] = (
    (
        "chart-connected",
        _chart_connected,
        "Central agencies connected through the gateway (solid) and with the direct fallback "
        "added (dashed), against the source report's counts and the target of 225 agencies. "
        "The dotted red line marks the mass disconnection.",
    ),
    (
        "chart-backlog",
        _chart_backlog,
        "Access-to-information requests waiting for an agency that was neither connected nor "
        "on the direct fallback, and the running count of legal deadlines missed.",
    ),
    (
        "chart-waves",
        _chart_waves,
        "Each wave from its start to the last of its agencies connected; when it has a gate, "
        "its soak (lighter) up to the day the gate passed and a mark at every gate evaluation "
        "(green circle: passed, red cross: failed). The direct fallback from the day it "
        "opened; hatched rows are the injected faults' windows (drawn at least a day wide). "
        "Agencies back / agencies named, and those the gate's rollback sent away, at the end "
        "of each row.",
    ),
)


def _svg(fig: Figure, figure_id: str) -> str:
    buffer = io.StringIO()
    with mpl.rc_context({"svg.hashsalt": f"pasarela-{figure_id}"}):
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    # Matplotlib numbers ids per figure (figure_1, axes_1...): prefix them, and the
    # references to them, so ids stay unique in a page holding several charts.
    return re.sub(r'(\bid="|href="#|url\(#)', rf"\g<1>{figure_id}-", text[text.index("<svg") :])


def _badge(value: bool | None) -> str:
    if value is None:
        return '<span class="badge na">n/a</span>'
    return '<span class="badge yes">yes</span>' if value else '<span class="badge no">no</span>'


def _number(value: Any) -> str:
    if value is None:
        return "\N{EN DASH}"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{int(value):,}"
    return str(value)


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], *, css: str = "") -> str:
    """A table whose head is text (escaped here) and whose cells are HTML (escaped by callers)."""
    ths = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{ths}</tr></thead><tbody>{body}</tbody></table>'


def _columns(runs: Runs, single: str) -> list[str]:
    return [label for label, _ in runs] if len(runs) > 1 else [single]


def _calibration(runs: Runs) -> str:
    """One run: simulated and within-tolerance columns; several: both in one cell per plan."""
    single = len(runs) == 1
    head = ["figure", "report", "simulated", "within ±10%"] if single else ["figure", "report"]
    head += [] if single else [f"{label} (within ±10%)" for label, _ in runs]
    rows = []
    for i, first in enumerate(runs[0][1]["calibration"]):
        unit = " %" if first["unit"] == "%" else ""
        row = [escape(first["figure"]), escape(_number(first["report"]) + unit)]
        for _, results in runs:
            cell = results["calibration"][i]
            value = escape(_number(cell["simulated"]) + unit)
            badge = _badge(cell["within_tolerance"])
            row += [value, badge] if single else [f"{value} {badge}"]
        rows.append(row)
    return _table(head, rows, css="numbers")


def _expectations(runs: Runs) -> str:
    plan = len(runs) > 1
    rows = [
        [escape(label)] * plan
        + [escape(f"{e['key']} {e['kind']}"), _badge(e["held"]), escape(e["detail"])]
        for label, results in runs
        for e in results["expectations"]
    ]
    head = ["plan"] * plan + ["expectation", "held", "detail"]
    return _table(head, rows) if rows else "<p>The scenario states no expectations.</p>"


SUMMARY_ROWS = (
    ("agencies back (of those the plan names)", "agencies_back"),
    ("full reconnection", "full_reconnection"),
    ("days from the disconnection to full reconnection", "days_to_full_reconnection"),
    ("ATI answers late", "ati_answered_late"),
    ("ATI answers never given (due by the end)", "ati_never_answered"),
    ("ATI requests answered in time", "in_time"),
    ("peak backlog (requests)", "backlog_peak"),
    ("answers through the direct fallback", "fallback_answers"),
    ("reconnection checks failed", "check_failures"),
    ("gate failures", "gate_failures"),
    ("messages accepted under distrusted keys", "exposure_superseded_accepted"),
    ("exposure (seconds a distrusted key was usable)", "exposure_seconds"),
    ("expectations held", "held"),
    ("wall time of the run (s)", "wall"),
)
#: Rows read from ``plan`` that older results lack: shown when some run has them.
PLAN_SUMMARY_ROWS = ("gate_failures", "exposure_seconds")


def _summary(runs: Runs) -> str:
    cells = []
    for _, results in runs:
        s = summarise(dict(results))
        rate = s["ati_in_time_rate"]
        s["in_time"] = None if rate is None else f"{rate:.1%}"
        s["held"] = f"{s['expectations_held']}/{s['expectations']}"
        s["wall"] = f"{s['wall_seconds']:.1f}"
        s.update({key: results["plan"].get(key) for key in PLAN_SUMMARY_ROWS})
        cells.append(s)
    rows = [
        (name, key)
        for name, key in SUMMARY_ROWS
        if key not in PLAN_SUMMARY_ROWS or any(s[key] is not None for s in cells)
    ]
    days = sorted({d for s in cells for d in s["on_portal_by_date"]})
    lines = [(name, [s[key] for s in cells]) for name, key in rows[:3]]
    for day in days:
        on_portal = [s["on_portal_by_date"].get(day) for s in cells]
        lines.append((f"central agencies on the portal, {day}", on_portal))
    lines += [(name, [s[key] for s in cells]) for name, key in rows[3:]]
    rows_html = [[escape(name)] + [escape(_number(v)) for v in values] for name, values in lines]
    return _table(["", *_columns(runs, "value")], rows_html, css="numbers")


def _gateway(runs: Runs) -> str:
    gateways = [results["gateway"] for _, results in runs]
    lines = [
        ("log records", [_number(g["log_records"]) for g in gateways]),
        ("hash chain verified", [_badge(g["log_verified"]) for g in gateways]),
    ]
    for part, key in (("records", "records_by_kind"), ("rejected", "rejected_by_reason")):
        for name in sorted({k for g in gateways for k in g[key]}):
            lines.append((f"{part}: {name}", [_number(g[key].get(name, 0)) for g in gateways]))
    superseded = [_number(g["superseded_key_accepted"]) for g in gateways]
    lines.append(("accepted under a superseded key", superseded))
    rows = [[escape(name), *values] for name, values in lines]
    return _table(["", *_columns(runs, "value")], rows, css="numbers")


#: Rows beyond which a table of agencies is folded into <details>.
FOLD_ROWS = 30


def _folded(table: str, *, agencies: int, fold: bool) -> str:
    """The table, or folded into <details> naming how many agencies it lists."""
    if not fold:
        return table
    return f"<details><summary>{agencies} agencies (show)</summary>{table}</details>"


def _agencies_back(runs: Runs) -> str:
    """Agency code → day back, in side-by-side blocks; folded away when still long."""
    backs = [results["plan"]["agencies_back"] for _, results in runs]
    codes = sorted({code for back in backs for code in back})
    if not codes:
        return "<p>The plan names no agencies.</p>"
    blocks = max(1, 8 // (len(runs) + 1))
    height = -(-len(codes) // blocks)
    head = ["agency", *_columns(runs, "back on")] * blocks
    rows = []
    for r in range(height):
        row = [c for code in codes[r::height] for c in (code, *(b.get(code) for b in backs))]
        rows.append([escape(_number(c)) for c in row] + [""] * (len(head) - len(row)))
    table = _table(head, rows, css="agencies")
    return _folded(table, agencies=len(codes), fold=height > FOLD_ROWS)


#: plan.agency_table: column heading → key of a row.
AGENCY_COLUMNS = (
    ("agency", "code"),
    ("kind", "kind"),
    ("wave", "wave"),
    ("back on", "back"),
    ("route", "route"),
    ("final state", "state"),
    ("check failures", "check_failures"),
    ("ATI requests", "requests"),
    ("late", "answered_late"),
    ("never answered", "never_answered"),
)


def _agency_table(table: Sequence[Mapping[str, Any]]) -> str:
    if not table:
        return "<p>The run lists no agencies.</p>"
    rows = [[escape(_number(row.get(key))) for _, key in AGENCY_COLUMNS] for row in table]
    html = _table([name for name, _ in AGENCY_COLUMNS], rows, css="agencies agency-table")
    return _folded(html, agencies=len(rows), fold=len(rows) > FOLD_ROWS)


def _has_agency_table(runs: Runs) -> bool:
    return any("agency_table" in results["plan"] for _, results in runs)


def _agencies(runs: Runs) -> str:
    """Each run's plan.agency_table (one table a run); older results: the day each came back."""
    if not _has_agency_table(runs):
        return _agencies_back(runs)
    parts = []
    for label, results in runs:
        table = results["plan"].get("agency_table")
        block = _agencies_back([(label, results)]) if table is None else _agency_table(table)
        parts.append(f"<h3>{escape(label)}</h3>{block}" if len(runs) > 1 else block)
    return "".join(parts)


def _criteria(gate: Mapping[str, Any]) -> str:
    """A gate's criteria as a line of text: "soak 5 business days · error rate ≤ 2% · ..."."""
    parts, soak = [], int(gate.get("soak_days") or 0)
    if soak:
        parts.append(f"soak {soak} business day{'' if soak == 1 else 's'}")
    criteria = gate.get("criteria") or {}
    if criteria.get("max_error_rate") is not None:
        parts.append(f"error rate \N{LESS-THAN OR EQUAL TO} {criteria['max_error_rate'] * 100:g}%")
    if criteria.get("max_p99_ms") is not None:
        parts.append(f"p99 \N{LESS-THAN OR EQUAL TO} {criteria['max_p99_ms']:,g} ms")
    alerts = criteria.get("max_alerts")
    if alerts is not None:
        parts.append("no alerts" if alerts == 0 else f"\N{LESS-THAN OR EQUAL TO} {alerts} alerts")
    if criteria.get("checks_passed"):
        parts.append("all checks passed")
    return " \N{MIDDLE DOT} ".join(parts) or "no criteria"


#: A failed gate criterion, as results name it → as the report says it.
FAILED_CRITERIA = {
    "error_rate": "error rate",
    "p99_ms": "p99",
    "alerts": "alerts",
    "checks": "checks",
}


def _evaluations(evaluations: Sequence[Mapping[str, Any]]) -> str:
    """n passed / n failed, then how often each criterion failed."""
    passed = sum(1 for e in evaluations if e["passed"])
    text = escape(f"{passed} passed / {len(evaluations) - passed} failed")
    counts: dict[str, int] = {}
    for evaluation in evaluations:
        for name in evaluation.get("failed", ()):
            counts[name] = counts.get(name, 0) + 1
    if counts:
        failed = ", ".join(
            f"{FAILED_CRITERIA.get(n, n)} \N{MULTIPLICATION SIGN}{k}" for n, k in counts.items()
        )
        text += f'<br><span class="muted">failed: {escape(failed)}</span>'
    return text


def _rollback(figures: Mapping[str, Any], gate: Mapping[str, Any]) -> str:
    """What the gate's rollback rule did: agencies quarantined or sent to the fallback."""
    taken = []
    for key, what in (("quarantined", "quarantined"), ("fell_back", "fell back")):
        codes = figures.get(key) or []
        if codes:
            more = ", \N{HORIZONTAL ELLIPSIS}" if len(codes) > 6 else ""
            taken.append(f"{len(codes)} {what} ({', '.join(codes[:6])}{more})")
    failures = any(not e["passed"] for e in gate.get("evaluations", ()))
    text = "; ".join(taken) or ("paused" if failures else "none")
    rule = escape(f"(on failure: {gate.get('on_failure', 'pause')})")
    return f'{escape(text)} <span class="muted">{rule}</span>'


def _gates(runs: Runs) -> str | None:
    """One row per gated wave (a plan column when several runs); None when no wave has a gate."""
    plan = len(runs) > 1
    rows = []
    for label, results in runs:
        for wave, figures in results["agencies"]["waves"].items():
            gate = figures.get("gate")
            if not gate:
                continue
            passed = gate.get("passed")
            rows.append(
                [escape(label)] * plan
                + [
                    escape(wave),
                    escape(_criteria(gate)),
                    _evaluations(gate.get("evaluations", ())),
                    escape(passed) if passed else '<span class="badge no">not passed</span>',
                    _rollback(figures, gate),
                ]
            )
    if not rows:
        return None
    head = ["plan"] * plan + ["wave", "criteria", "evaluations", "passed on", "rollback taken"]
    return _table(head, rows, css="gates")


def _when(value: str | None) -> str:
    """An ISO date-time as "2015-05-20 09:00"; None is the end of the run."""
    return "end of the run" if value is None else value.replace("T", " ")[:16]


def _faults(runs: Runs) -> str | None:
    """The injected faults (a plan column when several runs); None when there were none."""
    plan = len(runs) > 1
    rows = [
        [escape(label)] * plan
        + [
            escape(str(f.get("key", ""))),
            escape(f["kind"]),
            escape(f["target"] or "\N{EN DASH}"),
            escape(_when(f["start"])),
            escape(_when(f["end"])),
            escape(_number(f.get("affected"))),
        ]
        for label, results in runs
        for f in results.get("faults") or ()
    ]
    if not rows:
        return None
    head = ["plan"] * plan + ["fault", "kind", "target", "from", "to", "exchanges affected"]
    return _table(head, rows, css="faults")


def _header(runs: Runs, title: str) -> str:
    rows = []
    for label, results in runs:
        s, days = results["scenario"], results["simulated"]["days"]
        span = f"{s['start']} to {s['end']} ({days:,} days)"
        held = f"{sum(e['held'] for e in results['expectations'])}/{len(results['expectations'])}"
        facts = (label, s["name"], s["file"], s["seed"], s["plan"], span, held)
        rows.append([escape(str(v)) for v in facts])
    head = ["run", "scenario", "file", "seed", "plan", "simulated span", "expectations held"]
    return (
        f'<header><p class="eyebrow">pasarela rehearsal report</p><h1>{escape(title)}</h1>'
        '<p class="lede">The PISEE interoperability gateway rehearsed in virtual time: every '
        "message between the Transparency Portal and the central agencies signed, relayed, "
        f"verified and logged by the gateway code.</p>{_table(head, rows, css='meta')}</header>"
    )


STYLESHEET = """
body { margin: 0; background: #f3f4f6; color: #1f2933; font: 14px/1.5 system-ui,
  -apple-system, "Segoe UI", "DejaVu Sans", "Liberation Sans", sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 28px 28px 8px; }
h1 { font-size: 26px; line-height: 1.25; margin: 0 0 6px; }
h2 { font-size: 16px; margin: 0 0 14px; padding-bottom: 8px; border-bottom: 2px solid #1f5f99; }
.eyebrow { margin: 0 0 4px; color: #1f5f99; font-size: 12px; font-weight: 600;
  letter-spacing: 0.08em; text-transform: uppercase; }
.lede { color: #52606d; margin: 0 0 16px; max-width: 62em; }
header, section { background: #fff; border: 1px solid #e4e7eb; border-radius: 10px;
  padding: 22px 26px; margin-bottom: 20px; box-shadow: 0 1px 3px rgba(15, 23, 42, 0.05);
  overflow-x: auto; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 20px; }
figure { margin: 0 0 28px; }
figure:last-child { margin-bottom: 0; }
figure svg { display: block; width: 100%; height: auto; }
figcaption { color: #52606d; font-size: 13px; margin-top: 6px; }
table { border-collapse: collapse; width: 100%; font-size: 13px;
  font-variant-numeric: tabular-nums; }
th { text-align: left; font-weight: 600; color: #52606d; border-bottom: 1px solid #cbd2d9;
  padding: 6px 10px; white-space: nowrap; }
td { padding: 5px 10px; border-bottom: 1px solid #eef0f3; vertical-align: top; }
tbody tr:nth-child(even) td { background: #f9fafb; }
table.numbers td:not(:first-child), table.numbers th:not(:first-child) { text-align: right; }
table.meta td:first-child, table.agencies td { white-space: nowrap; }
table.agency-table td:nth-last-child(-n+4), table.agency-table th:nth-last-child(-n+4),
table.faults td:last-child, table.faults th:last-child { text-align: right; }
table.gates td:nth-last-child(2), table.faults td { white-space: nowrap; }
h3 { font-size: 14px; margin: 18px 0 8px; }
.muted { color: #6b7280; font-size: 12px; }
.badge { display: inline-block; min-width: 2.6em; text-align: center; border-radius: 999px;
  padding: 0 8px; font-size: 12px; font-weight: 600; }
.badge.yes { background: #e3f4e8; color: #1e6b3a; }
.badge.no { background: #fde8e6; color: #b42318; }
.badge.na { background: #eef0f3; color: #6b7280; }
summary { cursor: pointer; color: #1f5f99; font-weight: 600; }
footer { color: #7b8794; font-size: 12px; text-align: center; padding: 0 0 28px; }
"""


def _section(name: str, content: str) -> str:
    return f"<section><h2>{escape(name)}</h2>{content}</section>"


def render_report(runs: Runs, *, title: str | None = None) -> str:
    """The HTML page for one run, or several plans overlaid (same bytes for the same input)."""
    if not runs:
        raise ValueError("a report needs at least one run")
    if title is None:
        title = runs[0][1]["scenario"]["name"] if len(runs) == 1 else "Reconnection plans compared"
    with mpl.rc_context(CHART_STYLE):
        figures = "".join(
            f'<figure id="{fid}">{_svg(chart(runs), fid)}'
            f"<figcaption>{escape(caption)}</figcaption></figure>"
            for fid, chart, caption in CHARTS
        )
    extra = (("Gates", _gates(runs)), ("Faults", _faults(runs)))
    agencies = (
        "Agencies: wave, day back, route and final state"
        if _has_agency_table(runs)
        else "Agencies named by the plan: the day each came back"
    )
    overview = _section("Summary", _summary(runs)) + _section("Gateway message log", _gateway(runs))
    body = (
        (f'<div class="pair">{overview}</div>' if len(runs) == 1 else overview)
        + _section("Charts", figures)
        + "".join(_section(name, table) for name, table in extra if table is not None)
        + _section("Calibration against the source report (U4 Report 2015:2)", _calibration(runs))
        + _section("Expectations", _expectations(runs))
        + _section(agencies, _agencies(runs))
    )
    csp = "default-src 'none'; style-src 'unsafe-inline'"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLESHEET}</style></head>"
        f"<body><main>{_header(runs, title)}{body}</main>"
        f"<footer>Made by pasarela {escape(pasarela.__version__)} from results.json "
        f"({escape(str(runs[0][1].get('schema', '')))}).</footer></body></html>\n"
    )


def write_report(runs: Runs, path: Path, *, title: str | None = None) -> None:
    """Write ``render_report(runs)`` to ``path`` (UTF-8), creating its directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(runs, title=title), encoding="utf-8")
