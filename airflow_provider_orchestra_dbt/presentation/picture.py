"""A picture of one run: a self-contained HTML page with the selected dbt DAG as inline SVG.

Stateful nodes are boxes coloured by outcome, sources feeding them are pills, and tests are
small markers along the bottom edge of the node (or source) they check, so a 200-node project
stays readable without one box per test. Each box links to a side panel with everything about
the node: decision, reason, outcome, dbt status, timing, message, its tests, and for a skipped
node the failures that made dbt skip it. A panel is shown by CSS ``:target`` alone and hover
titles repeat the essentials, so the page needs no JavaScript and no network: it can be
attached to a task log, opened from disk or served by Airflow under a CSP that forbids scripts.

The output is a pure function of the ``RunReport``: the same run always gives the same bytes.
"""

from __future__ import annotations

import html
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from graphlib import TopologicalSorter
from itertools import pairwise
from pathlib import Path

from airflow_provider_orchestra_dbt import __version__
from airflow_provider_orchestra_dbt.decisions.graph import Graph, Node
from airflow_provider_orchestra_dbt.decisions.outcomes import NodeResult
from airflow_provider_orchestra_dbt.decisions.planner import Decision
from airflow_provider_orchestra_dbt.presentation.report import (
    BUILT,
    FAILED,
    NOT_RUN,
    PASSED,
    REUSED,
    SKIPPED,
    WARNED,
    RunReport,
)

# Extra picture-only kinds: a build that a plan-only run decided but did not execute, a node
# drawn only because a selected test checks it (``dbt test`` plans no stateful node), a source.
TO_BUILD, CONTEXT, SOURCE = "to_build", "context", "source"

# outcome -> (fill, stroke, legend label); text stays dark on every fill for contrast.
_STYLES: dict[str, tuple[str, str, str]] = {
    BUILT: ("#b2e5c1", "#237a3e", "built"),
    REUSED: ("#d7e1ec", "#5c7a99", "reused"),
    FAILED: ("#f7b9b9", "#c62828", "failed"),
    SKIPPED: ("#ffd3a1", "#d9620b", "skipped"),
    NOT_RUN: ("#f8f9fa", "#adb5bd", "not run"),
    TO_BUILD: ("#ffffff", "#237a3e", "will build (plan only)"),
    CONTEXT: ("#ffffff", "#868e96", "not in plan (tested only)"),
    SOURCE: ("#fffdf5", "#7a6a3a", "source"),
}
_TEST_STYLES: dict[str, tuple[str, str]] = {
    PASSED: ("#2f9e44", "passed"),
    WARNED: ("#f2b705", "warned"),
    FAILED: ("#d62828", "failed"),
    SKIPPED: ("#f08c00", "skipped"),
    REUSED: ("#8aa2bb", "reused"),
    NOT_RUN: ("#dee2e6", "not run"),
    TO_BUILD: ("#ffffff", "will run (plan only)"),
}
# Markers are capped per node: the worst outcomes come first so a failure is never hidden.
_TEST_RANK = {FAILED: 0, WARNED: 1, SKIPPED: 2, NOT_RUN: 3, TO_BUILD: 4, PASSED: 5, REUSED: 6}

# Geometry, in SVG user units (pixels at 100% zoom).
_NODE_H = 38
_V_GAP = 18  # leaves room for the test markers hanging off the bottom edge
_DUMMY_H = 4
_DUMMY_GAP = 4
_H_GAP = 64
_MARGIN = 16
_CHAR_W = 7.7  # a wide (DejaVu) bold 12px character: columns sized without measuring text
_MIN_W, _MAX_W = 140, 280
_MARK = 8
_SWEEPS = 4
# Edges spanning several layers are routed through placeholder slots so they do not cross
# boxes; past this many placeholders (huge, deep graphs) they are drawn as plain curves.
_MAX_DUMMIES = 30_000


@dataclass
class _Item:
    uid: str
    kind: str  # "node", "source" or "dummy"
    outcome: str
    label: str = ""
    detail: str = ""
    tooltip: str = ""
    layer: int = 0
    index: float = 0.0
    y: float = 0.0
    height: float = _NODE_H
    tests: list[_Marker] = field(default_factory=list)
    resource_type: str = ""
    facts: list[tuple[str, str]] = field(default_factory=list)
    causes: tuple[str, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class _Marker:
    uid: str
    outcome: str
    tooltip: str
    name: str = ""
    facts: tuple[tuple[str, str], ...] = ()
    causes: tuple[str, ...] = ()


# What is drawn, keyed by unique_id; the edges; how many tests had nowhere to go.
_Drawing = tuple[dict[str, _Item], list[tuple[str, str]], int]
_BECAUSE = "skipped because"


def render_run_html(report: RunReport, *, title: str | None = None) -> str:
    """The whole page for ``report``: header, legend, DAG picture and the decision table."""
    heading = title or _default_title(report)
    causes = skip_causes(report)
    drawing: _Drawing | None = None
    if report.graph is not None and report.plan is not None:
        drawing = _collect(report, report.graph, report.plan.decisions, causes)
    parts = [
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n",
        f"<title>{_esc(heading)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n",
        _header(report, heading),
        _picture(report, drawing),
        _tables(report, causes, drawing[0] if drawing is not None else {}),
        f"<footer>airflow-provider-orchestra-dbt {_esc(__version__)}</footer>\n",
        "</body>\n</html>\n",
    ]
    return "".join(parts)


def write_run_html(
    report: RunReport, path: str | os.PathLike[str], *, title: str | None = None
) -> Path:
    """Write the page atomically: a reader (a browser, a log viewer) never sees half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    content = render_run_html(report, title=title).encode("utf-8")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            # mkstemp makes the file owner-only; a picture is meant to be read by others
            # (a log viewer, a web server), like the file a plain open() would have made.
            os.fchmod(handle.fileno(), 0o644)
            handle.write(content)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


# -- header -------------------------------------------------------------------------------------


def _default_title(report: RunReport) -> str:
    target = f" on {report.target}" if report.target else ""
    kind = "plan for dbt" if report.dry_run else "dbt"
    return f"{kind} {report.command}{target}"


def _header(report: RunReport, heading: str) -> str:
    if report.dry_run:
        status, status_class = "plan only: nothing executed", "plan"
    elif report.success:
        status, status_class = "succeeded", "ok"
    else:
        status, status_class = f"failed (exit code {report.exit_code})", "bad"
    facts: list[tuple[str, str]] = [("command", f"dbt {report.command}")]
    facts.append(("target", report.target or "(profile default)"))
    for name, value in report.run_info.items():
        # An unmapped task's map_index (-1) says nothing to a reader.
        if value is not None and not (name == "map_index" and value == -1):
            facts.append((str(name), str(value)))
    if report.invocation_id:
        facts.append(("dbt invocation", report.invocation_id))
    if report.plan is not None and not report.dry_run:
        facts.append(("state entries recorded", str(report.state_updates)))
    out = [
        f"<header>\n<h1>{_esc(heading)} <span class='status {status_class}'>",
        f"{_esc(status)}</span></h1>\n<dl class='facts'>",
    ]
    out += [f"<div><dt>{_esc(k)}</dt><dd>{_esc(v)}</dd></div>" for k, v in facts]
    out.append("</dl>\n")
    if report.error:
        out.append(f"<p class='error'>{_esc(report.error)}</p>\n")
    if report.plan is not None:
        saved = _duration(report.time_saved_seconds)
        out.append(
            f"<p class='saved'>Estimated warehouse time saved by reuse: <strong>{_esc(saved)}"
            "</strong> <span class='hint'>(the last recorded build time of every reused node)"
            "</span></p>\n"
        )
        out.append(_counts(report))
    out.append("</header>\n")
    return "".join(out)


def _counts(report: RunReport) -> str:
    counts = report.counts()
    nodes = [(k, counts[k]) for k in (BUILT, REUSED, FAILED, SKIPPED, NOT_RUN)]
    tests = [(k, counts[f"tests_{k}"]) for k in (PASSED, WARNED, FAILED, SKIPPED, REUSED, NOT_RUN)]

    def chips(rows: Sequence[tuple[str, int]], css: str) -> str:
        # A plan executes nothing: its "not run" nodes are the ones it would build or run.
        not_run = ("will build" if css == "o" else "will run") if report.dry_run else "not run"
        return "".join(
            f"<span class='chip {css}-{k}{' zero' if n == 0 else ''}' data-count='{css}-{k}'>"
            f"{_esc(not_run if k == NOT_RUN else k)} <b>{n}</b></span>"
            for k, n in rows
        )

    return (
        f"<div class='counts'><span class='what'>nodes</span>{chips(nodes, 'o')}</div>\n"
        f"<div class='counts'><span class='what'>tests</span>{chips(tests, 't')}</div>\n"
    )


def _legend(has_context: bool, dry_run: bool) -> str:
    entries = [BUILT, REUSED, FAILED, SKIPPED, NOT_RUN]
    if dry_run:
        entries = [TO_BUILD, REUSED]
    if has_context:
        entries.append(CONTEXT)
    out = ["<div class='legend' aria-label='legend'>"]
    for outcome in entries:
        fill, stroke, label = _STYLES[outcome]
        dash = " stroke-dasharray='4 3'" if outcome in (NOT_RUN, TO_BUILD, CONTEXT) else ""
        out.append(
            f"<span class='key' data-key='node-{outcome}'><svg width='26' height='16'><rect "
            f"x='1' y='2' width='24' height='12' rx='3' fill='{fill}' stroke='{stroke}' "
            f"stroke-width='1.5'{dash}/>"
            f"</svg>{_esc(label)}</span>"
        )
    fill, stroke, label = _STYLES[SOURCE]
    out.append(
        f"<span class='key' data-key='source'><svg width='26' height='16'><rect x='1' y='2' "
        f"width='24' height='12' rx='6' fill='{fill}' stroke='{stroke}' stroke-width='1.5'/></svg>"
        f"{label}</span><span class='sep'>tests:</span>"
    )
    test_keys = [TO_BUILD, REUSED] if dry_run else [PASSED, WARNED, FAILED, SKIPPED, REUSED]
    for outcome in test_keys:
        colour, label = _TEST_STYLES[outcome]
        out.append(
            f"<span class='key' data-key='test-{outcome}'><svg width='12' height='16'><rect "
            f"x='1' y='4' width='{_MARK}' height='{_MARK}' rx='1.5' fill='{colour}' "
            "stroke='#343a40' stroke-width='0.8'/>"
            f"</svg>{_esc(label)}</span>"
        )
    out.append(
        "<span class='hint'>click a box for its decision, reason, outcome and tests; hover for "
        "a glance</span></div>\n"
    )
    return "".join(out)


# -- picture ------------------------------------------------------------------------------------


def _picture(report: RunReport, drawing: _Drawing | None) -> str:
    if report.graph is None or drawing is None:
        return "<p class='empty'>Not a state-aware run: there is no plan to draw.</p>\n"
    graph = report.graph
    items, edges, loose_tests = drawing
    has_context = any(i.outcome == CONTEXT for i in items.values())
    legend = _legend(has_context, report.dry_run)
    if not items:
        return legend + "<p class='empty'>Nothing selected: no stateful node to draw.</p>\n"
    layers, paths = _layout(items, edges)
    svg = _svg(layers, paths)
    note = ""
    if loose_tests:
        note = (
            f"<p class='hint'>{loose_tests} selected test(s) check nothing drawn here; "
            "they are listed in the table below.</p>\n"
        )
    return f"{legend}<div class='dag'>{svg}</div>\n{note}{_panels(items, graph)}"


def _collect(
    report: RunReport,
    graph: Graph,
    decisions: Sequence[Decision],
    causes: Mapping[str, tuple[str, ...]],
) -> _Drawing:
    """Everything drawn, keyed by unique_id; the edges; how many tests had nowhere to go."""
    outcomes = report.outcomes()
    items, tests = _planned_items(report, graph, decisions, causes, outcomes)
    _add_tested_context(items, graph, tests)
    stateful = list(items)
    _add_sources(items, graph, stateful, tests)
    edges = _edges(graph, stateful, items)
    loose = _attach_test_markers(report, graph, tests, causes, outcomes, items)
    return items, edges, loose


def _planned_items(
    report: RunReport,
    graph: Graph,
    decisions: Sequence[Decision],
    causes: Mapping[str, tuple[str, ...]],
    outcomes: Mapping[str, str],
) -> tuple[dict[str, _Item], list[Decision]]:
    """A box per planned stateful node, in plan order; and the planned tests, set aside."""
    items: dict[str, _Item] = {}
    tests: list[Decision] = []
    for decision in decisions:
        node = graph.nodes.get(decision.unique_id)
        if node is None:
            continue
        if node.is_test:
            tests.append(decision)
        elif node.is_stateful:
            uid = node.unique_id
            outcome = _shown_outcome(report, decision, outcomes[uid])
            result = report.results.get(uid)
            facts = _facts(decision, outcome, result, causes.get(uid, ()))
            items[uid] = _Item(
                uid,
                "node",
                outcome,
                node.name,
                _detail(node, outcome, result),
                _tooltip(uid, facts),
                resource_type=node.resource_type,
                facts=facts,
                causes=causes.get(uid, ()),
            )
    return items, tests


def _add_tested_context(items: dict[str, _Item], graph: Graph, tests: Sequence[Decision]) -> None:
    """`dbt test` plans tests only: draw what they check so the markers have a home."""
    for decision in tests:
        for uid in graph.tested_nodes(decision.unique_id):
            node = graph[uid]
            if node.is_stateful and uid not in items:
                note = "not in this run's plan: drawn because a selected test checks it"
                items[uid] = _Item(
                    uid,
                    "node",
                    CONTEXT,
                    node.name,
                    node.resource_type,
                    f"{uid}\n{note}",
                    resource_type=node.resource_type,
                    note=note,
                )


def _add_sources(
    items: dict[str, _Item], graph: Graph, stateful: Sequence[str], tests: Sequence[Decision]
) -> None:
    """The sources the drawn nodes read, and those a selected test checks."""
    for uid in stateful:
        for source_id in graph.upstream(uid).sources:
            _add_source(items, graph, source_id)
    for decision in tests:
        for uid in graph.tested_nodes(decision.unique_id):
            if graph[uid].resource_type == "source":
                _add_source(items, graph, uid)


def _edges(
    graph: Graph, stateful: Sequence[str], items: Mapping[str, _Item]
) -> list[tuple[str, str]]:
    """(parent, child) for every drawn node and each of its drawn direct parents."""
    edges: list[tuple[str, str]] = []
    for uid in stateful:
        up = graph.upstream(uid)
        edges += [(p, uid) for p in (*up.sources, *up.nodes) if p in items]
    return edges


def _attach_test_markers(
    report: RunReport,
    graph: Graph,
    tests: Sequence[Decision],
    causes: Mapping[str, tuple[str, ...]],
    outcomes: Mapping[str, str],
    items: dict[str, _Item],
) -> int:
    """Put each test's marker on every drawn node it checks; return how many had none."""
    loose = 0
    for decision in tests:
        uid = decision.unique_id
        outcome = _shown_outcome(report, decision, outcomes[uid])
        facts = _facts(decision, outcome, report.results.get(uid), causes.get(uid, ()))
        marker = _Marker(
            uid,
            outcome,
            _tooltip(uid, facts),
            graph[uid].name,
            tuple(facts),
            causes.get(uid, ()),
        )
        homes = [uid for uid in graph.tested_nodes(decision.unique_id) if uid in items]
        for uid in homes:
            items[uid].tests.append(marker)
        loose += not homes
    for item in items.values():
        item.tests.sort(key=lambda m: (_TEST_RANK.get(m.outcome, 9), m.uid))
    return loose


def _add_source(items: dict[str, _Item], graph: Graph, source_id: str) -> None:
    if source_id in items or source_id not in graph:
        return
    readers = [c for c in graph.stateful_children.get(source_id, ()) if c in items]
    note = f"source, read by {len(readers)} drawn node(s)"
    items[source_id] = _Item(
        source_id,
        "source",
        SOURCE,
        _source_label(graph[source_id]),
        "",
        f"{source_id}\n{note}",
        resource_type="source",
        note=note,
    )


def skip_causes(report: RunReport) -> dict[str, tuple[str, ...]]:
    """For each skipped node or test, the nearest failures upstream: why dbt skipped it.

    dbt skips whatever depends on a failed node and, in ``dbt build``, whatever depends on a
    node whose error-severity test failed; a skip passes its causes on to what depends on it.
    So walk up through the nodes that did not run: a failed node ends the walk and is a cause,
    as is a failed test on a node passed through (a test's own siblings are not skipped by it).
    Tests come after the nodes they check in topological order, so one pass suffices.
    """
    graph = report.graph
    if graph is None or report.plan is None:
        return {}
    outcomes = report.outcomes()
    failed_tests_on: dict[str, list[str]] = {}
    for uid, outcome in outcomes.items():
        if outcome == FAILED and graph[uid].is_test:
            for tested in graph.tested_nodes(uid):
                failed_tests_on.setdefault(tested, []).append(uid)
    blocked: dict[str, tuple[str, ...]] = {}
    for uid in graph.topological(outcomes):
        if outcomes[uid] not in (SKIPPED, NOT_RUN):
            continue
        is_test = graph[uid].is_test
        parents = graph.tested_nodes(uid) if is_test else graph.upstream(uid).nodes
        found: set[str] = set()
        for parent in parents:
            if outcomes.get(parent) == FAILED:
                found.add(parent)
            else:
                found.update(blocked.get(parent, ()))
            if not is_test:
                found.update(failed_tests_on.get(parent, ()))
        blocked[uid] = tuple(graph.topological(found))
    return {uid: found for uid, found in blocked.items() if outcomes[uid] == SKIPPED}


def _shown_outcome(report: RunReport, decision: Decision, outcome: str) -> str:
    # A plan-only run executes nothing: "not run" would hide which nodes it decided to build.
    if report.dry_run and decision.builds and outcome == NOT_RUN:
        return TO_BUILD
    return outcome


def _detail(node: Node, outcome: str, result: NodeResult | None) -> str:
    text = {TO_BUILD: "will build", NOT_RUN: "not run", FAILED: "FAILED"}.get(outcome, outcome)
    # dbt reports 0s for what it skipped; a time is only news for what actually ran.
    if result is not None and result.execution_time is not None and outcome in (BUILT, FAILED):
        text += f" {result.execution_time:.2f}s"
    return f"{node.resource_type} \u00b7 {text}"


def _facts(
    decision: Decision, outcome: str, result: NodeResult | None, causes: tuple[str, ...]
) -> list[tuple[str, str]]:
    """What the hover title and the side panel say about one planned node or test."""
    facts = [
        ("decision", decision.action.value),
        ("reason", decision.reason),
        ("outcome", outcome.replace("_", " ")),
    ]
    if outcome == SKIPPED:
        facts.append((_BECAUSE, _because(causes)))
    if result is not None:
        facts.append(("dbt status", result.status))
        # dbt reports 0s for what it skipped or left as it was: no time is news there.
        if result.execution_time is not None and outcome not in (SKIPPED, REUSED):
            facts.append(("execution time", f"{result.execution_time:.2f}s"))
        if result.finished_at:
            facts.append(("finished at", result.finished_at))
        if result.rows_affected is not None and result.rows_affected >= 0:
            facts.append(("rows affected", str(result.rows_affected)))
        if result.failures:
            facts.append(("failures", str(result.failures)))
        if result.message:
            facts.append(("message", result.message))
    return facts


def _because(causes: Sequence[str]) -> str:
    if not causes:
        return "no failure upstream of it in this run"
    return f"{', '.join(causes)} failed"


def _tooltip(uid: str, facts: Iterable[tuple[str, str]]) -> str:
    return "\n".join([uid, *(f"{label}: {value}" for label, value in facts)])


def _layout(
    items: dict[str, _Item], edges: list[tuple[str, str]]
) -> tuple[list[list[_Item]], list[list[_Item]]]:
    """Layers left to right by longest path from the roots; each edge as its chain of items."""
    parents: dict[str, list[str]] = {uid: [] for uid in items}
    for parent, child in edges:
        parents[child].append(parent)
    # Longest path from the roots (sources, seeds, nodes whose parents are not drawn): every
    # edge then points rightwards, and a node sits right after its deepest parent.
    for uid in TopologicalSorter(parents).static_order():
        items[uid].layer = max((items[p].layer + 1 for p in parents[uid]), default=0)

    depth = max(i.layer for i in items.values()) + 1
    layers: list[list[_Item]] = [[] for _ in range(depth)]
    for item in sorted(items.values(), key=lambda i: (i.kind != "source", i.label, i.uid)):
        layers[item.layer].append(item)

    span = sum(items[c].layer - items[p].layer - 1 for p, c in edges)
    route = span <= _MAX_DUMMIES
    paths: list[list[_Item]] = []
    for parent, child in sorted(edges):
        chain = [items[parent]]
        if route:
            for layer in range(items[parent].layer + 1, items[child].layer):
                dummy = _Item(f"{parent}->{child}@{layer}", "dummy", "", layer=layer)
                dummy.height = _DUMMY_H
                layers[layer].append(dummy)
                chain.append(dummy)
        chain.append(items[child])
        paths.append(chain)

    ups: dict[str, list[_Item]] = {}
    downs: dict[str, list[_Item]] = {}
    for chain in paths:
        for a, b in pairwise(chain):
            ups.setdefault(b.uid, []).append(a)
            downs.setdefault(a.uid, []).append(b)
    _order(layers, ups, downs)
    _place(layers, ups, downs)
    return layers, paths


def _order(
    layers: list[list[_Item]], ups: Mapping[str, list[_Item]], downs: Mapping[str, list[_Item]]
) -> None:
    """Barycentre sweeps: fewer crossings, and the ordering is deterministic."""
    for layer in layers:
        for i, item in enumerate(layer):
            item.index = i
    for sweep in range(_SWEEPS):
        down = sweep % 2 == 0
        sequence = range(1, len(layers)) if down else range(len(layers) - 2, -1, -1)
        for n in sequence:
            neighbours = ups if down else downs
            keyed = []
            for item in layers[n]:
                near = neighbours.get(item.uid, ())
                bary = sum(x.index for x in near) / len(near) if near else item.index
                keyed.append((bary, item.index, item))
            keyed.sort(key=lambda t: (t[0], t[1]))
            layers[n] = [t[2] for t in keyed]
            for i, item in enumerate(layers[n]):
                item.index = i


def _place(
    layers: list[list[_Item]], ups: Mapping[str, list[_Item]], downs: Mapping[str, list[_Item]]
) -> None:
    """Vertical positions: stacked in order, then pulled towards their neighbours."""
    for layer in layers:
        y = 0.0
        for item in layer:
            item.y = y
            y += item.height + _gap(item)
    tallest = max(_column_height(layer) for layer in layers)
    for layer in layers:
        offset = (tallest - _column_height(layer)) / 2
        for item in layer:
            item.y += offset
    for sweep in range(_SWEEPS):
        down = sweep % 2 == 0
        sequence = range(1, len(layers)) if down else range(len(layers) - 2, -1, -1)
        for n in sequence:
            _align(layers[n], ups if down else downs)
    low = min(item.y for layer in layers for item in layer)
    for layer in layers:
        for item in layer:
            item.y -= low


def _align(layer: list[_Item], neighbours: Mapping[str, list[_Item]]) -> None:
    """Least-squares move towards the neighbours' centres, keeping order and spacing.

    With ``z_i = y_i - offset_i`` (offset: the space the items above need) the spacing
    constraints become ``z`` non-decreasing, so this is isotonic regression (pool adjacent
    violators): linear time, exact, and no item ever overlaps another.
    """
    if not layer:
        return
    offsets: list[float] = []
    total = 0.0
    for item in layer:
        offsets.append(total)
        total += item.height + _gap(item)
    targets: list[float] = []
    for item, offset in zip(layer, offsets, strict=True):
        near = neighbours.get(item.uid, ())
        centre = (
            sum(x.y + x.height / 2 for x in near) / len(near) if near else item.y + item.height / 2
        )
        targets.append(centre - item.height / 2 - offset)
    blocks: list[list[float]] = []  # [sum, count]
    for t in targets:
        blocks.append([t, 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    i = 0
    for s, c in blocks:
        for _ in range(int(c)):
            layer[i].y = s / c + offsets[i]
            i += 1


def _gap(item: _Item) -> float:
    return _DUMMY_GAP if item.kind == "dummy" else _V_GAP


def _column_height(layer: Sequence[_Item]) -> float:
    return sum(i.height + _gap(i) for i in layer)


def _svg(layers: list[list[_Item]], paths: list[list[_Item]]) -> str:
    widths = [_column_width(layer) for layer in layers]
    xs: list[float] = []
    x = float(_MARGIN)
    for w in widths:
        xs.append(x)
        x += w + _H_GAP
    width = x - _H_GAP + _MARGIN
    height = max(i.y + i.height for layer in layers for i in layer) + 2 * _MARGIN + _MARK

    def left(item: _Item) -> float:
        return xs[item.layer]

    def right(item: _Item) -> float:
        return xs[item.layer] + widths[item.layer]

    def mid(item: _Item) -> float:
        return _MARGIN + item.y + item.height / 2

    out = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width:.0f}' height='{height:.0f}' "
        f"viewBox='0 0 {width:.0f} {height:.0f}' role='img' aria-label='dbt DAG of this run' "
        "font-family='system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif'>",
        "<defs><marker id='arrow' viewBox='0 0 8 8' refX='7' refY='4' markerWidth='7' "
        "markerHeight='7' orient='auto'><path d='M0,0 L8,4 L0,8 z' fill='#868e96'/></marker>"
        "</defs>",
        "<g class='edges' fill='none' stroke='#9aa3ab' stroke-width='1.3' stroke-opacity='0.8'>",
    ]
    for chain in paths:
        d = [f"M{right(chain[0]):.1f},{mid(chain[0]):.1f}"]
        for a, b in pairwise(chain):
            x0, y0, x1, y1 = right(a), mid(a), left(b), mid(b)
            bend = (x1 - x0) / 2
            d.append(f"C{x0 + bend:.1f},{y0:.1f} {x1 - bend:.1f},{y1:.1f} {x1:.1f},{y1:.1f}")
            if b.kind == "dummy":
                d.append(f"H{right(b):.1f}")
        out.append(f"<path d='{' '.join(d)}' marker-end='url(#arrow)'/>")
    out.append("</g>\n<g class='nodes' font-size='12'>")
    for layer in layers:
        for item in layer:
            if item.kind != "dummy":
                out.append(_svg_item(item, left(item), _MARGIN + item.y, widths[item.layer]))
    out.append("</g></svg>")
    return "\n".join(out)


def _column_width(layer: Iterable[_Item]) -> float:
    needed = max((len(i.label) * _CHAR_W + 2 * _pad(i) + 4 for i in layer), default=0.0)
    return min(max(needed, _MIN_W), _MAX_W)


def _pad(item: _Item) -> float:
    """Room between the box edge and its text; a source's rounded ends need more."""
    return item.height / 2 if item.kind == "source" else 8


def _svg_item(item: _Item, x: float, y: float, w: float) -> str:
    fill, stroke, _ = _STYLES[item.outcome]
    source = item.kind == "source"
    rx = _pad(item) if source else 4
    stroke_width = 2.5 if item.outcome == FAILED else 1.5
    dash = " stroke-dasharray='5 3'" if item.outcome in (NOT_RUN, TO_BUILD, CONTEXT) else ""
    pad = _pad(item)
    max_chars = max(int((w - 2 * pad) / _CHAR_W), 4)
    label = item.label if len(item.label) <= max_chars else item.label[: max_chars - 1] + "\u2026"
    css = f"{item.kind} outcome-{item.outcome}"
    out = [
        f"<a href='#{_anchor(item.uid)}'><g class='{css}' data-unique-id='{_esc(item.uid)}'>",
        f"<title>{_esc(item.tooltip)}</title>",
        f"<rect x='{x:.1f}' y='{y:.1f}' width='{w:.1f}' height='{item.height:.0f}' rx='{rx:.0f}' "
        f"fill='{fill}' stroke='{stroke}' stroke-width='{stroke_width}'{dash}/>",
    ]
    if source:
        out.append(
            f"<text x='{x + pad:.1f}' y='{y + 16:.1f}' font-weight='600'>{_esc(label)}</text>"
            f"<text x='{x + pad:.1f}' y='{y + 29:.1f}' font-size='10' fill='#6b5d33'>source"
            "</text>"
        )
    else:
        out.append(
            f"<text x='{x + pad:.1f}' y='{y + 16:.1f}' font-weight='600'>{_esc(label)}</text>"
            f"<text x='{x + pad:.1f}' y='{y + 30:.1f}' font-size='10' fill='#495057'>"
            f"{_esc(item.detail)}</text>"
        )
    out.append(_markers(item, x + pad, y + item.height - _MARK / 2, w - 2 * pad))
    out.append("</g></a>")
    return "".join(out)


def _markers(item: _Item, x: float, y: float, room: float) -> str:
    if not item.tests:
        return ""
    step = _MARK + 3
    fits = max(int((room + 3) // step), 1)
    shown = item.tests if len(item.tests) <= fits else item.tests[: fits - 1]
    out = []
    for i, marker in enumerate(shown):
        colour, _ = _TEST_STYLES.get(marker.outcome, ("#dee2e6", ""))
        dash = " stroke-dasharray='2 1'" if marker.outcome == TO_BUILD else ""
        out.append(
            f"<rect class='test outcome-{marker.outcome}' data-unique-id='{_esc(marker.uid)}' "
            f"x='{x + i * step:.1f}' y='{y:.1f}' width='{_MARK}' height='{_MARK}' rx='1.5' "
            f"fill='{colour}' stroke='#343a40' stroke-width='0.8'{dash}>"
            f"<title>{_esc(marker.tooltip)}</title></rect>"
        )
    hidden = item.tests[len(shown) :]
    if hidden:
        tip = f"{len(hidden)} more test(s):\n" + "\n".join(
            f"{m.uid}: {m.outcome.replace('_', ' ')}" for m in hidden
        )
        out.append(
            f"<g class='more'><title>{_esc(tip)}</title><text x='{x + len(shown) * step:.1f}' "
            f"y='{y + _MARK - 0.5:.1f}' font-size='9' fill='#343a40'>+{len(hidden)}</text></g>"
        )
    return "".join(out)


# -- side panels --------------------------------------------------------------------------------


def _panels(items: Mapping[str, _Item], graph: Graph) -> str:
    """One panel per box, hidden until its box (or a link to it) makes it the URL's target."""
    out = ["<div class='panels'>\n"]
    for item in items.values():
        out.append(_panel(item, items, graph))
    out.append("</div>\n")
    return "".join(out)


def _panel(item: _Item, items: Mapping[str, _Item], graph: Graph) -> str:
    _, _, shown = _STYLES[item.outcome]
    out = [
        f"<section class='panel' id='{_anchor(item.uid)}' aria-label='{_esc(item.label)}'>",
        "<a class='close' href='#none' title='close'>\u00d7</a>",
        f"<h2>{_esc(item.label)}</h2><p class='uid'>{_esc(item.uid)}</p>",
        f"<p><span class='pill o-{_esc(item.outcome)}'>{_esc(shown)}</span> "
        f"{_esc(item.resource_type)}</p>",
    ]
    if item.note:
        out.append(f"<p class='note'>{_esc(item.note)}</p>")
    if item.facts:
        out.append(_facts_html(item.facts, item.causes, items, graph))
    if item.tests:
        out.append(f"<h3>Tests ({len(item.tests)})</h3><ul class='tests'>")
        for marker in item.tests:
            _, label = _TEST_STYLES.get(marker.outcome, ("", marker.outcome.replace("_", " ")))
            out.append(
                f"<li><span class='pill t-{_esc(marker.outcome)}'>{_esc(label)}</span> "
                f"<b>{_esc(marker.name)}</b> <span class='uid'>{_esc(marker.uid)}</span>"
                f"{_facts_html(marker.facts, marker.causes, items, graph, skip=('outcome',))}"
                "</li>"
            )
        out.append("</ul>")
    out.append("</section>\n")
    return "".join(out)


def _facts_html(
    facts: Iterable[tuple[str, str]],
    causes: tuple[str, ...],
    items: Mapping[str, _Item],
    graph: Graph,
    skip: tuple[str, ...] = (),
) -> str:
    out = ["<dl>"]
    for label, value in facts:
        if label in skip:
            continue
        if label == _BECAUSE and causes:
            shown = "<br>".join(_cause_html(uid, items, graph) for uid in causes)
        else:
            shown = _esc(value)
        out.append(f"<dt>{_esc(label)}</dt><dd>{shown}</dd>")
    out.append("</dl>")
    return "".join(out)


def _cause_html(uid: str, items: Mapping[str, _Item], graph: Graph) -> str:
    """A failure, linked to the panel that tells more about it."""
    if uid in items:
        return f"{_link(uid, items[uid].label)} failed"
    if uid in graph and graph[uid].is_test:
        homes = [_link(t, items[t].label) for t in graph.tested_nodes(uid) if t in items]
        on = f" on {', '.join(homes)}" if homes else ""
        return f"test <b>{_esc(graph[uid].name)}</b>{on} failed"
    return f"{_esc(uid)} failed"


def _panel_of(uid: str, items: Mapping[str, _Item], graph: Graph | None) -> str | None:
    """Whose panel tells about ``uid``: its own, or for a test the first box it is drawn on."""
    if uid in items:
        return uid
    if graph is None or uid not in graph or not graph[uid].is_test:
        return None
    return next((t for t in graph.tested_nodes(uid) if t in items), None)


def _link(uid: str, text: str) -> str:
    return f"<a href='#{_anchor(uid)}' title='{_esc(uid)}'>{_esc(text)}</a>"


def _anchor(uid: str) -> str:
    """The panel id for ``uid``: readable, distinct per id, and safe unescaped in a URL.

    Characters other than ASCII letters, digits, ``.``, ``_`` and ``-`` become ``~`` and the
    hex of their UTF-8 bytes (``~`` itself included), so no two ids collide.
    """
    out = []
    for char in uid:
        if char.isascii() and (char.isalnum() or char in "._-"):
            out.append(char)
        else:
            out.extend(f"~{byte:02x}" for byte in char.encode())
    return "n-" + "".join(out)


# -- tables -------------------------------------------------------------------------------------


def _tables(
    report: RunReport, causes: Mapping[str, tuple[str, ...]], items: Mapping[str, _Item]
) -> str:
    """What went wrong, open and worst first; then every decision, folded away."""
    outcomes = report.outcomes()
    decisions = report.plan.by_id if report.plan is not None else {}
    graph = report.graph
    uids = list(decisions) if decisions else sorted(report.results)
    rows = []
    problems: list[tuple[int, str]] = []
    for uid in uids:
        decision = decisions.get(uid)
        result = report.results.get(uid)
        outcome = outcomes.get(uid, "")
        if decision is not None:
            outcome = _shown_outcome(report, decision, outcome)
        if decision is not None:
            rtype = decision.resource_type
        else:
            rtype = graph[uid].resource_type if graph is not None and uid in graph else ""
        ran = outcome not in (SKIPPED, REUSED)  # dbt reports 0s for what it skipped
        elapsed = (
            f"{result.execution_time:.2f}s"
            if result and result.execution_time is not None and ran
            else ""
        )
        message = result.message if result and result.message else ""
        if outcome == SKIPPED and not message:
            message = f"{_BECAUSE} {_because(causes.get(uid, ()))}"
        home = _panel_of(uid, items, graph)
        shown_uid = _link(home, uid) if home is not None else _esc(uid)
        row = (
            f"<tr class='outcome-{_esc(outcome)}'><td class='uid'>{shown_uid}</td>"
            f"<td>{_esc(rtype)}</td><td>{_esc(decision.action.value if decision else '')}</td>"
            f"<td><span class='pill o-{_esc(outcome)}'>{_esc(outcome.replace('_', ' '))}</span>"
            f"</td><td class='num'>{_esc(elapsed)}</td>"
            f"<td>{_esc(decision.reason if decision else '')}</td><td>{_esc(message)}</td></tr>"
        )
        rows.append(row)
        if outcome in _PROBLEM_RANK:
            problems.append((_PROBLEM_RANK[outcome], row))
    head = (
        "<thead><tr><th>node</th><th>type</th><th>decision</th><th>outcome</th><th>time</th>"
        "<th>reason</th><th>message</th></tr></thead>"
    )
    out = []
    if problems:
        # Stable sort: within one outcome, the plan's (topological) order is kept.
        worst_first = "".join(row for _, row in sorted(problems, key=lambda p: p[0]))
        out.append(
            f"<details class='problems' open><summary>Failed, warned and skipped "
            f"({len(problems)})</summary><table>{head}<tbody>{worst_first}</tbody>"
            "</table></details>\n"
        )
    out.append(
        f"<details class='all'><summary>Every decision ({len(rows)} nodes and tests)"
        f"</summary><table>{head}<tbody>{''.join(rows)}</tbody></table></details>\n"
    )
    return "".join(out)


_PROBLEM_RANK = {FAILED: 0, WARNED: 1, SKIPPED: 2}


# -- helpers ------------------------------------------------------------------------------------


def _esc(text: str) -> str:
    """Escaped for HTML text and quoted attributes alike, and valid inside SVG as XML."""
    return html.escape(text, quote=True)


def _source_label(node: Node) -> str:
    return node.unique_id.split(".", 2)[-1] if node.unique_id.count(".") >= 2 else node.name


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


_CSS = """
:root { color-scheme: light; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
  margin: 0; padding: 16px 20px; color: #212529; background: #fff; }
h1 { font-size: 20px; margin: 0 0 8px; }
.status { font-size: 13px; font-weight: 600; padding: 2px 10px; border-radius: 10px;
  vertical-align: middle; margin-left: 6px; }
.status.ok { background: #d3f9d8; color: #1b5e20; }
.status.bad { background: #ffe3e3; color: #b71c1c; }
.status.plan { background: #e7f5ff; color: #1c4f80; }
.facts { display: flex; flex-wrap: wrap; gap: 4px 22px; margin: 0 0 8px; }
.facts div { display: flex; gap: 6px; }
.facts dt { color: #868e96; }
.facts dd { margin: 0; font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 13px; }
.error { background: #fff5f5; border-left: 4px solid #c62828; padding: 6px 10px;
  white-space: pre-wrap; font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; }
.saved { margin: 6px 0; }
.hint { color: #868e96; font-size: 12px; }
.counts { margin: 4px 0; display: flex; flex-wrap: wrap; gap: 6px; align-items: center; }
.counts .what { width: 44px; color: #868e96; }
.chip { border-radius: 10px; padding: 1px 9px; font-size: 13px; border: 1px solid #ced4da; }
.chip.zero { opacity: 0.45; }
.o-built, .t-passed { background: #b2e5c1; border-color: #237a3e; }
.o-reused, .t-reused { background: #d7e1ec; border-color: #5c7a99; }
.o-failed, .t-failed { background: #f7b9b9; border-color: #c62828; }
.o-skipped, .t-skipped { background: #ffd3a1; border-color: #d9620b; }
.o-not_run, .t-not_run { background: #f8f9fa; border-color: #adb5bd; }
.o-to_build { background: #fff; border: 1px dashed #237a3e; }
.t-warned, .o-warned { background: #ffe8a3; border-color: #c99700; }
.o-passed { background: #b2e5c1; border-color: #237a3e; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 14px; align-items: center; font-size: 13px;
  margin: 12px 0 6px; position: sticky; top: 0; background: #fff; padding: 4px 0; z-index: 1; }
.legend .key { display: inline-flex; align-items: center; gap: 4px; }
.legend .sep { color: #868e96; margin-left: 8px; }
.dag { overflow: auto; border: 1px solid #e9ecef; border-radius: 6px; background: #fcfcfd; }
.dag svg { display: block; max-width: 100%; height: auto; }
.dag a { cursor: pointer; }
.dag a:hover > g > rect:first-of-type, .dag a:focus > g > rect:first-of-type {
  stroke: #1c7ed6; stroke-width: 3; }
.dag a:focus { outline: none; }
.panel { display: none; position: fixed; top: 12px; right: 12px; z-index: 2;
  width: min(440px, calc(100vw - 48px)); max-height: calc(100vh - 24px); overflow: auto;
  box-sizing: border-box; padding: 12px 16px; background: #fff; border: 1px solid #ced4da;
  border-radius: 8px; box-shadow: 0 6px 24px rgba(0, 0, 0, 0.18); }
.panel:target { display: block; }
.panel .close { position: absolute; top: 4px; right: 12px; font-size: 22px; color: #495057;
  text-decoration: none; }
.panel h2 { font-size: 16px; margin: 0 24px 2px 0; overflow-wrap: anywhere; }
.panel h3 { font-size: 13px; margin: 12px 0 4px; }
.panel p { margin: 4px 0; }
.panel .uid { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px;
  color: #495057; overflow-wrap: anywhere; }
.panel dl { display: grid; grid-template-columns: max-content 1fr; gap: 3px 10px;
  margin: 6px 0; font-size: 13px; }
.panel dt { color: #868e96; }
.panel dd { margin: 0; overflow-wrap: anywhere; white-space: pre-wrap; }
.panel .tests { list-style: none; padding: 0; margin: 0; }
.panel .tests li { border-top: 1px solid #e9ecef; padding: 5px 0; font-size: 13px; }
.panel .tests dl { font-size: 12px; }
.empty { color: #868e96; font-style: italic; }
details { margin-top: 14px; }
summary { cursor: pointer; font-weight: 600; }
table { border-collapse: collapse; font-size: 12px; margin-top: 6px; width: 100%; }
th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid #e9ecef;
  vertical-align: top; }
th { background: #f1f3f5; position: sticky; top: 0; }
td.uid { font-family: ui-monospace, Menlo, Consolas, monospace; overflow-wrap: anywhere; }
td.num { text-align: right; white-space: nowrap; }
.pill { border-radius: 8px; padding: 0 7px; border: 1px solid #ced4da; white-space: nowrap; }
.o-source { background: #fffdf5; border-color: #7a6a3a; }
.o-context { background: #fff; border: 1px dashed #868e96; }
footer { margin-top: 18px; color: #adb5bd; font-size: 11px; }
"""
