"""The "dbt reuse" page: built vs reused vs failed and time saved, per DAG task over time.

Read from the ``return_value`` XComs of OrchestraDbtOperator and OrchestraDbtCloudOperator
tasks in the metadata DB (the api-server's session); a task's page adds each model's state
from the task's state store. Rendered as plain HTML with inline SVG: no script, no assets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow_provider_orchestra_dbt.plugins.task_records import as_json

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from airflow_provider_orchestra_dbt.plugins.model_state import ModelState

# Tasks whose summaries the view reads: both operators push the same summary.
OPERATOR_NAMES = ("OrchestraDbtOperator", "OrchestraDbtCloudOperator")
RUNS_PER_TASK = 30
MAX_ROWS = 2000
_COLOURS = {"built": "#2f80ed", "reused": "#27ae60", "failed": "#eb5757"}


@dataclass(frozen=True)
class ReuseRow:
    dag_id: str
    task_id: str
    run_id: str
    map_index: int
    when: datetime | None
    built: int
    reused: int
    failed: int
    time_saved_seconds: float


def parse_summary(value: Any) -> dict[str, Any] | None:
    """The run summary from an XCom value (a dict, or its JSON text), else None."""
    value = as_json(value)
    if not isinstance(value, dict) or not isinstance(value.get("counts"), dict):
        return None
    return value


def to_row(
    dag_id: str, task_id: str, run_id: str, map_index: int, when: datetime | None, value: Any
) -> ReuseRow | None:
    summary = parse_summary(value)
    if summary is None:
        return None
    counts = summary["counts"]
    try:
        return ReuseRow(
            dag_id=dag_id,
            task_id=task_id,
            run_id=run_id,
            map_index=map_index,
            when=when,
            built=int(counts.get("built", 0)),
            reused=int(counts.get("reused", 0)),
            failed=int(counts.get("failed", 0)),
            time_saved_seconds=float(summary.get("time_saved_seconds") or 0.0),
        )
    except (TypeError, ValueError):
        return None


def load_rows(
    session: Session,
    dag_ids: Iterable[str],
    limit: int = MAX_ROWS,
    task_id: str | None = None,
) -> list[ReuseRow]:
    """The newest ``limit`` dbt run summaries of these DAGs (or of one task), oldest first."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from sqlalchemy import and_, select

    allowed = sorted(set(dag_ids))
    if not allowed:
        return []
    query = (
        select(
            XComModel.dag_id,
            XComModel.task_id,
            XComModel.run_id,
            XComModel.map_index,
            XComModel.timestamp,
            XComModel.value,
        )
        .join(
            TaskInstance,
            and_(
                TaskInstance.dag_id == XComModel.dag_id,
                TaskInstance.run_id == XComModel.run_id,
                TaskInstance.task_id == XComModel.task_id,
                TaskInstance.map_index == XComModel.map_index,
            ),
        )
        .where(
            XComModel.key == "return_value",
            TaskInstance.operator.in_(OPERATOR_NAMES),
            XComModel.dag_id.in_(allowed),
            *([XComModel.task_id == task_id] if task_id is not None else []),
        )
        .order_by(XComModel.timestamp.desc())
        .limit(limit)
    )
    records: list[Any] = list(session.execute(query))
    rows = [to_row(*record) for record in records]
    return [row for row in reversed(rows) if row is not None]


def _bar_chart(rows: Sequence[ReuseRow]) -> str:
    """Stacked bars, one per run, oldest on the left."""
    bar, gap, height = 14, 4, 80
    tallest = max((r.built + r.reused + r.failed for r in rows), default=0) or 1
    width = len(rows) * (bar + gap) + gap
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="built, reused and failed nodes per run">'
    ]
    for i, row in enumerate(rows):
        x = gap + i * (bar + gap)
        y = float(height)
        for name, count in (("reused", row.reused), ("built", row.built), ("failed", row.failed)):
            if not count:
                continue
            h = count / tallest * height
            y -= h
            parts.append(
                f'<rect x="{x}" y="{y:.1f}" width="{bar}" height="{h:.1f}" '
                f'fill="{_COLOURS[name]}"><title>{escape(row.run_id)}: {count} {name}</title>'
                "</rect>"
            )
    parts.append("</svg>")
    return "".join(parts)


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"


_STYLE = (
    "body{font-family:sans-serif;margin:1rem}table{border-collapse:collapse}"
    "td,th{padding:2px 8px;text-align:right;vertical-align:top}"
    "td:first-child,th:first-child,td.text,th.text{text-align:left}"
    "section{margin-bottom:1.5rem}tr.builds td.next{color:#b3541e}"
)


def _page(title: str, body: Sequence[str]) -> str:
    return "".join(
        [
            f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{escape(title)}</title>',
            f"<style>{_STYLE}</style></head><body>",
            *body,
            "</body></html>",
        ]
    )


def _legend() -> str:
    return " ".join(
        f'<span style="color:{colour}">&#9632; {name}</span>' for name, colour in _COLOURS.items()
    )


def _runs_section(rows: Sequence[ReuseRow], heading: str) -> list[str]:
    recent = rows[-RUNS_PER_TASK:]
    saved = sum(r.time_saved_seconds for r in recent)
    body = [
        f"<section><h2>{heading}</h2>"
        f"<p>{len(recent)} runs, {_duration(saved)} saved</p>{_bar_chart(recent)}"
        "<table><tr><th>run</th><th>when</th><th>built</th><th>reused</th>"
        "<th>failed</th><th>time saved</th></tr>"
    ]
    for r in reversed(recent):
        when = r.when.strftime("%Y-%m-%d %H:%M") if r.when else ""
        mapped = f" [{r.map_index}]" if r.map_index >= 0 else ""
        body.append(
            f"<tr><td>{escape(r.run_id)}{mapped}</td><td>{when}</td><td>{r.built}</td>"
            f"<td>{r.reused}</td><td>{r.failed}</td>"
            f"<td>{_duration(r.time_saved_seconds)}</td></tr>"
        )
    body.append("</table></section>")
    return body


def task_path(dag_id: str, task_id: str) -> str:
    """The task's page, relative to the overview's URL (``.../reuse``)."""
    return f"reuse/dags/{quote(dag_id, safe='')}/tasks/{quote(task_id, safe='')}"


def render_page(rows: Sequence[ReuseRow]) -> str:
    """The overview; every id is escaped (DAG, task and run ids come from users)."""
    groups: dict[tuple[str, str], list[ReuseRow]] = {}
    for row in rows:
        groups.setdefault((row.dag_id, row.task_id), []).append(row)
    body = [
        f"<h1>dbt reuse</h1><p>Nodes per run: {_legend()}. Newest {RUNS_PER_TASK} runs per "
        "task you can read; time saved is the warehouse time reused nodes took when last "
        "built. Open a task for each model's current state.</p>",
    ]
    if not groups:
        body.append(
            "<p>No runs of OrchestraDbtOperator or OrchestraDbtCloudOperator tasks yet.</p>"
        )
    for (dag_id, task_id), task_rows in sorted(groups.items()):
        link = escape(task_path(dag_id, task_id))
        heading = f'<a href="{link}">{escape(dag_id)} &middot; {escape(task_id)}</a>'
        body.extend(_runs_section(task_rows, heading))
    return _page("dbt reuse", body)


def render_task_page(
    dag_id: str,
    task_id: str,
    rows: Sequence[ReuseRow],
    models: Sequence[ModelState],
    state_note: str,
) -> str:
    """One task: its runs, then each model of its latest run with its state and next step."""
    up = "../" * 4  # from reuse/dags/<dag>/tasks/<task> back to the overview's directory
    title = f"{dag_id} · {task_id}"
    body = [
        f'<p><a href="{up}reuse">&larr; dbt reuse</a></p><h1>{escape(title)}</h1>',
        f"<p>Nodes per run: {_legend()}.</p>",
    ]
    if rows:
        body.extend(_runs_section(rows, "Runs"))
    else:
        body.append("<p>No runs of this task yet.</p>")
    body.append(f"<section><h2>Models</h2><p>{escape(state_note)}</p>")
    if models:
        body.append(
            '<table><tr><th>node</th><th class="text">last run</th><th class="text">why</th>'
            '<th class="text">last built</th><th class="text">data consumed</th>'
            '<th class="text">status</th><th class="text">next run</th></tr>'
        )
        for m in models:
            css = ' class="builds"' if m.next_run.startswith("builds") else ""
            body.append(
                f"<tr{css}><td>{escape(m.unique_id)}</td>"
                f'<td class="text">{escape(m.outcome)}</td>'
                f'<td class="text">{escape(m.reason)}</td>'
                f'<td class="text">{escape(m.last_built or "never")}</td>'
                f'<td class="text">{escape(m.consumed)}</td>'
                f'<td class="text">{escape(m.status or "")}</td>'
                f'<td class="text next">{escape(m.next_run)}</td></tr>'
            )
        body.append("</table>")
    body.append("</section>")
    return _page(f"dbt reuse: {title}", body)
