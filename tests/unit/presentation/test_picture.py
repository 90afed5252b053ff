"""The HTML picture of a run, read back with the standard library's parsers: no browser."""

from __future__ import annotations

import random
import re
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import replace
from html.parser import HTMLParser
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from support.synthetic_graph import (
    EPH,
    M1,
    M2,
    NOW,
    SEED,
    SRC_A,
    SRC_B,
    STG,
    T_M1,
    T_SPAN,
    T_SRC,
    base_graph,
    clean_state,
    dbt_test,
    fingerprints,
    fresh_probe,
    model,
    source,
)

from airflow_provider_orchestra_dbt.decisions.graph import Graph
from airflow_provider_orchestra_dbt.decisions.outcomes import NodeResult
from airflow_provider_orchestra_dbt.decisions.planner import Action, PlanOptions, plan
from airflow_provider_orchestra_dbt.presentation.picture import (
    render_run_html,
    skip_causes,
    write_run_html,
)
from airflow_provider_orchestra_dbt.presentation.report import RunReport
from airflow_provider_orchestra_dbt.state.model import StateEntries, StateEntry


def parsed_clean_state(graph: Graph) -> StateEntries:
    return {k: StateEntry.from_json(e) for k, e in clean_state(graph).items()}


SVG = "{http://www.w3.org/2000/svg}"
M3 = "model.p.m3"  # planned to build (its relation is missing) but never run
EVIL = "code changed (<script>alert(\"x\")</script> & 'quotes')"
RUN_INFO = {"dag_id": "shop", "run_id": "manual__2026-06-01", "try_number": 2}


def graph_with_m3() -> Graph:
    base = base_graph()
    return Graph([*base.nodes.values(), model(M3, STG)])


def mixed_report(**overrides: Any) -> RunReport:
    """stg_a built, s1 reused, m1 failed, m2 skipped, m3 not run; tests passed/failed/skipped."""
    graph = graph_with_m3()
    selected = [SEED, STG, EPH, M1, M2, M3, T_M1, T_SRC, T_SPAN]
    changed = fingerprints({STG: "code", M1: "code"})
    the_plan = plan(
        graph, selected, parsed_clean_state(graph), changed, fresh_probe(), PlanOptions(now=NOW)
    )
    actions = {d.unique_id: d.action for d in the_plan.decisions}
    assert actions == {
        SEED: Action.REUSE,
        STG: Action.BUILD,
        M1: Action.BUILD,
        M2: Action.BUILD,
        M3: Action.BUILD,
        T_M1: Action.BUILD,
        T_SRC: Action.BUILD,
        T_SPAN: Action.BUILD,
    }
    results = {
        STG: NodeResult(STG, "success", 1.25, rows_affected=7),
        M1: NodeResult(M1, "error", 0.5, message='Runtime Error: relation <x> & "y"'),
        M2: NodeResult(M2, "skipped", 0.0),
        T_SRC: NodeResult(T_SRC, "pass", 0.1),
        T_SPAN: NodeResult(T_SPAN, "fail", 0.2, failures=3, message="Got 3 results"),
        T_M1: NodeResult(T_M1, "skipped", 0.0),
    }
    report = RunReport(
        command="build",
        target="dev",
        exit_code=1,
        graph=graph,
        plan=the_plan,
        results=results,
        time_saved_seconds=125.0,
        state_updates=1,
        run_info=RUN_INFO,
    )
    return replace(report, **overrides)


def with_reason(report: RunReport, uid: str, reason: str) -> RunReport:
    assert report.plan is not None
    decisions = tuple(
        replace(d, reason=reason) if d.unique_id == uid else d for d in report.plan.decisions
    )
    return replace(report, plan=replace(report.plan, decisions=decisions))


# -- reading the page back ---------------------------------------------------------------------


def dag(page: str) -> ET.Element:
    """The DAG's SVG, which must be well-formed XML on its own."""
    match = re.search(r"<div class='dag'>(<svg .*?</svg>)</div>", page, re.S)
    assert match, "no DAG picture in the page"
    return ET.fromstring(match.group(1))


def classes(element: ET.Element) -> set[str]:
    return set(element.get("class", "").split())


def drawn(svg: ET.Element, kind: str) -> dict[str, list[ET.Element]]:
    """Groups of one kind ("node", "source") by unique_id: a list, to catch duplicates."""
    found: dict[str, list[ET.Element]] = {}
    for g in svg.iter(f"{SVG}g"):
        if kind in classes(g):
            found.setdefault(g.get("data-unique-id", ""), []).append(g)
    return found


def box(group: ET.Element) -> ET.Element:
    rect = group.find(f"{SVG}rect")
    assert rect is not None
    return rect


def title(element: ET.Element) -> str:
    return element.findtext(f"{SVG}title") or ""


def outcome_of(group: ET.Element) -> str:
    (outcome,) = [c.removeprefix("outcome-") for c in classes(group) if c.startswith("outcome-")]
    return outcome


def markers(group: ET.Element) -> dict[str, str]:
    return {
        r.get("data-unique-id", ""): outcome_of(r)
        for r in group.iter(f"{SVG}rect")
        if "test" in classes(r)
    }


class Page(HTMLParser):
    """Every start tag, and the text of elements by their ``data-count`` or class."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.counts: dict[str, str] = {}
        self.legend: dict[str, tuple[str, str]] = {}  # data-key -> (label, swatch fill)
        self.text: list[str] = []
        self._count: str | None = None
        self._key: str | None = None
        self._legend_fill = ""
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        attributes = dict(attrs)
        if "data-count" in attributes:
            self._count = attributes["data-count"]
        if tag == "span" and attributes.get("class") == "key":
            self._key = attributes.get("data-key")
        if self._key is not None and tag == "rect":
            self._legend_fill = attributes.get("fill") or ""

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag == "span":
            self._key = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._count is not None and data.strip().isdigit():
            self.counts[self._count] = data.strip()
            self._count = None
        if self._key is not None and data.strip():
            self.legend[self._key] = (data.strip(), self._legend_fill)

    @property
    def all_text(self) -> str:
        return " ".join(" ".join(self.text).split())


class Panels(HTMLParser):
    """Every id and href, and the text of each side panel by its id (panels do not nest)."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: list[str] = []
        self.hrefs: list[str] = []
        self.panels: dict[str, str] = {}
        self.links: dict[str, list[str]] = {}  # panel id -> hrefs inside it
        self._panel: str | None = None
        self._text: list[str] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if attributes.get("id"):
            self.ids.append(str(attributes["id"]))
        if "href" in attributes:
            self.hrefs.append(str(attributes["href"]))
            if self._panel is not None:
                self.links[self._panel].append(str(attributes["href"]))
        if tag == "section" and attributes.get("class") == "panel":
            self._panel = str(attributes["id"])
            self.links[self._panel] = []
            self._text = []
        if self._panel is not None and tag in ("dt", "dd", "li", "p", "h2", "h3", "br"):
            self._text.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "section" and self._panel is not None:
            self.panels[self._panel] = "".join(self._text)
            self._panel = None

    def handle_data(self, data: str) -> None:
        if self._panel is not None:
            self._text.append(data)


def panel_href(page_text: str, uid: str) -> str:
    """Where clicking the box of ``uid`` goes."""
    links = [
        a.get("href", "")
        for a in dag(page_text).iter(f"{SVG}a")
        if any(g.get("data-unique-id") == uid for g in a.findall(f"{SVG}g"))
    ]
    assert len(links) == 1 and links[0].startswith("#"), links
    return links[0]


def panel_of(page_text: str, uid: str) -> tuple[str, list[str]]:
    """The text of the panel the box of ``uid`` links to, and the links in that panel."""
    panels = Panels(page_text)
    target = panel_href(page_text, uid)[1:]
    assert target in panels.panels, f"no panel {target!r}"
    return panels.panels[target], panels.links[target]


def facts(panel_text: str) -> dict[str, str]:
    """The panel's first list of facts (its node's, before any test's), label -> value."""
    lines = [line.strip() for line in panel_text.split("\n")]
    found: dict[str, str] = {}
    for label, value in pairwise(lines):
        if label in found or not label:
            continue
        if label in (
            "decision",
            "reason",
            "outcome",
            "dbt status",
            "execution time",
            "rows affected",
            "message",
            "skipped because",
        ):
            found[label] = value
    return found


# -- the picture -------------------------------------------------------------------------------


def test_every_planned_stateful_node_is_drawn_once_with_its_outcome() -> None:
    svg = dag(render_run_html(mixed_report()))
    nodes = drawn(svg, "node")
    assert {uid: len(groups) for uid, groups in nodes.items()} == dict.fromkeys(
        [SEED, STG, M1, M2, M3], 1
    )
    outcomes = {uid: outcome_of(groups[0]) for uid, groups in nodes.items()}
    assert outcomes == {
        STG: "built",
        SEED: "reused",
        M1: "failed",
        M2: "skipped",
        M3: "not_run",
    }
    # Five outcomes, five colours; the failure is also told apart by a heavier border.
    fills = {outcome: box(nodes[uid][0]).get("fill") for uid, outcome in outcomes.items()}
    assert len(set(fills.values())) == 5
    assert float(box(nodes[M1][0]).get("stroke-width", "0")) > float(
        box(nodes[STG][0]).get("stroke-width", "0")
    )


def test_the_legend_uses_the_colours_of_the_boxes() -> None:
    page_text = render_run_html(mixed_report())
    nodes = drawn(dag(page_text), "node")
    legend = Page(page_text).legend
    for uid, outcome, label in [
        (STG, "built", "built"),
        (SEED, "reused", "reused"),
        (M1, "failed", "failed"),
        (M2, "skipped", "skipped"),
        (M3, "not_run", "not run"),
    ]:
        assert legend[f"node-{outcome}"] == (label, box(nodes[uid][0]).get("fill"))
    span = next(r for r in nodes[M1][0].iter(f"{SVG}rect") if r.get("data-unique-id") == T_SPAN)
    assert legend["test-failed"] == ("failed", span.get("fill"))
    assert {"source", "test-passed", "test-warned", "test-reused"} <= set(legend)


def test_hover_titles_carry_id_decision_reason_outcome_and_time() -> None:
    nodes = drawn(dag(render_run_html(mixed_report())), "node")
    stg = title(nodes[STG][0])
    assert stg.splitlines()[0] == STG
    assert "decision: build" in stg
    assert "reason: code changed (code)" in stg
    assert "outcome: built" in stg
    assert "execution time: 1.25s" in stg
    assert "rows affected: 7" in stg
    seed = title(nodes[SEED][0])
    assert "decision: reuse" in seed and "reason: up to date" in seed
    assert 'message: Runtime Error: relation <x> & "y"' in title(nodes[M1][0])
    assert "relation db.main.m3 is missing" in title(nodes[M3][0])


def test_sources_are_drawn_as_pills_and_edges_look_through_ephemerals() -> None:
    svg = dag(render_run_html(mixed_report()))
    sources = drawn(svg, "source")
    assert set(sources) == {SRC_A, SRC_B}
    pill, node = box(sources[SRC_A][0]), box(drawn(svg, "node")[STG][0])
    assert float(pill.get("rx", "0")) == float(pill.get("height", "0")) / 2
    assert float(node.get("rx", "0")) < float(node.get("height", "0")) / 2
    # The ephemeral model is not drawn; the source it reads feeds m1 directly.
    assert EPH not in drawn(svg, "node")
    edges = svg.findall(f".//{SVG}g[@class='edges']/{SVG}path")
    assert len(edges) == 6  # a->stg, b->m1, stg->m1, m1->m2, s1->m2, stg->m3


def test_layers_go_left_to_right_by_longest_path_without_overlaps() -> None:
    svg = dag(render_run_html(mixed_report()))
    groups = {**drawn(svg, "node"), **drawn(svg, "source")}
    x = {uid: float(box(g[0]).get("x", "0")) for uid, g in groups.items()}
    assert x[SRC_A] == x[SRC_B] == x[SEED] < x[STG] < x[M1] < x[M2]
    assert x[M3] == x[M1]  # one step after stg_a, like m1
    assert_no_overlaps(svg)


def test_tests_are_markers_on_every_node_they_check() -> None:
    svg = dag(render_run_html(mixed_report()))
    nodes, sources = drawn(svg, "node"), drawn(svg, "source")
    assert markers(nodes[M1][0]) == {T_SPAN: "failed", T_M1: "skipped"}
    assert markers(nodes[SEED][0]) == {T_SPAN: "failed"}
    assert markers(sources[SRC_A][0]) == {T_SRC: "passed"}
    assert markers(nodes[STG][0]) == {}
    # No test is drawn as a box of its own.
    assert not any(uid.startswith("test.") for uid in nodes)
    span = next(r for r in nodes[M1][0].iter(f"{SVG}rect") if r.get("data-unique-id") == T_SPAN)
    assert "failures: 3" in title(span) and "reason: m1 is being built" in title(span)


def test_many_tests_on_one_node_put_the_failures_first() -> None:
    tests = [dbt_test(f"test.p.t{i:02d}", M1) for i in range(40)]
    graph = Graph([*base_graph().nodes.values(), *tests])
    the_plan = plan(graph, [M1, *graph.nodes], {}, fingerprints(), fresh_probe(), PlanOptions())
    results = {t.unique_id: NodeResult(t.unique_id, "pass") for t in tests}
    results["test.p.t39"] = NodeResult("test.p.t39", "fail")
    report = RunReport("build", None, 1, graph=graph, plan=the_plan, results=results)
    group = drawn(dag(render_run_html(report)), "node")[M1][0]
    shown = [r for r in group.iter(f"{SVG}rect") if "test" in classes(r)]
    assert 3 < len(shown) < 40
    assert shown[0].get("data-unique-id") == "test.p.t39"
    more = [g for g in group.iter(f"{SVG}g") if "more" in classes(g)]
    on_m1 = 40 + 2  # and the base graph's not_null_m1 and span_m1_s1
    assert len(more) == 1 and f"{on_m1 - len(shown)} more test(s)" in title(more[0])


# -- header, escaping, other kinds of run ------------------------------------------------------


def test_the_header_shows_command_target_status_counts_and_time_saved() -> None:
    report = mixed_report()
    page = Page(render_run_html(report))
    counts = report.counts()
    expected = {f"o-{k}": str(counts[k]) for k in ("built", "reused", "failed", "skipped")}
    expected |= {f"t-{k}": str(counts[f"tests_{k}"]) for k in ("passed", "failed", "skipped")}
    assert expected.items() <= page.counts.items()
    assert page.counts["o-not_run"] == "1"
    text = page.all_text
    assert "dbt build on dev" in text and "failed (exit code 1)" in text
    assert "Estimated warehouse time saved by reuse: 2 min 05 s" in text
    for name, value in RUN_INFO.items():
        assert f"{name} {value}" in text
    assert "Failed, warned and skipped" in text


def test_reasons_and_messages_are_escaped() -> None:
    report = with_reason(mixed_report(error="dbt said <blink>no</blink> & left"), M1, EVIL)
    page_text = render_run_html(report, title="<i>my</i> run")
    page = Page(page_text)
    assert not {"script", "blink", "i"} & set(page.tags)
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#x27;quotes&#x27;" in page_text
    # Parsed back, the text is exactly what dbt and the planner said.
    assert f"reason: {EVIL}" in title(drawn(dag(page_text), "node")[M1][0])
    assert EVIL in page.all_text and "dbt said <blink>no</blink> & left" in page.all_text
    assert "<i>my</i> run" in page.all_text


def test_a_plan_shows_what_it_would_build() -> None:
    report = mixed_report(results={}, dry_run=True, exit_code=0, time_saved_seconds=2.0)
    page_text = render_run_html(report)
    nodes = drawn(dag(page_text), "node")
    assert {uid: outcome_of(g[0]) for uid, g in nodes.items()} == {
        SEED: "reused",
        STG: "to_build",
        M1: "to_build",
        M2: "to_build",
        M3: "to_build",
    }
    assert set(markers(nodes[M1][0]).values()) == {"to_build"}
    page = Page(page_text)
    assert "plan only: nothing executed" in page.all_text
    assert page.legend["node-to_build"][0] == "will build (plan only)"
    assert "node-built" not in page.legend
    assert page.counts["o-not_run"] == "4"


def test_dbt_test_draws_the_tested_nodes_as_context() -> None:
    graph = base_graph()
    the_plan = plan(
        graph,
        [T_M1, T_SRC],
        parsed_clean_state(graph),
        fingerprints(),
        fresh_probe(),
        PlanOptions(now=NOW, command="test"),
    )
    report = RunReport("test", "dev", 0, graph=graph, plan=the_plan)
    svg = dag(render_run_html(report))
    nodes = drawn(svg, "node")
    assert {uid: outcome_of(g[0]) for uid, g in nodes.items()} == {M1: "context"}
    assert markers(nodes[M1][0]) == {T_M1: "reused"}
    assert set(drawn(svg, "source")) == {SRC_A, SRC_B}


def test_a_run_without_a_plan_lists_its_results() -> None:
    report = RunReport(
        "build", "dev", 0, results={"model.p.x": NodeResult("model.p.x", "success", 1.0)}
    )
    page_text = render_run_html(report)
    assert "<svg xmlns" not in page_text
    assert "no plan to draw" in page_text and "model.p.x" in page_text


def test_nothing_selected_still_renders() -> None:
    graph = base_graph()
    the_plan = plan(graph, [], {}, fingerprints(), fresh_probe(), PlanOptions(now=NOW))
    page_text = render_run_html(RunReport("build", None, 0, graph=graph, plan=the_plan))
    assert "Nothing selected" in page_text


def test_the_page_is_self_contained_and_deterministic() -> None:
    page_text = render_run_html(mixed_report())
    assert page_text == render_run_html(mixed_report())
    assert not re.search(r"src\s*=", page_text)  # nothing to fetch, even offline
    # Links only move within the page, and each one (but "close") has somewhere to go.
    page = Panels(page_text)
    assert page.hrefs and all(h.startswith("#") for h in page.hrefs)
    assert {h[1:] for h in page.hrefs} - {"none"} <= set(page.ids)
    assert len(page.ids) == len(set(page.ids))
    assert "<script" not in page_text and not re.search(r"\son\w+\s*=", page_text)


def big_graph(n: int, layers: int = 12, seed: int = 7) -> Graph:
    """``n`` models in layers, each reading 1-3 earlier models or sources, with tests."""
    rng = random.Random(seed)
    sources = [f"source.p.raw.s{i}" for i in range(40)]
    nodes = [source(s) for s in sources]
    placed: list[str] = []
    for i in range(n):
        uid = f"model.p.m{i:04d}"
        pool = placed[-300:] if i * layers // n else sources
        nodes.append(model(uid, *rng.sample(pool, k=min(len(pool), rng.randint(1, 3)))))
        placed.append(uid)
        nodes += [dbt_test(f"test.p.t{i}_{k}", uid) for k in range(rng.randint(0, 2))]
    return Graph(nodes)


def test_two_thousand_nodes_render() -> None:
    graph = big_graph(2000)
    models = [u for u in graph.nodes if u.startswith("model.")]
    the_plan = plan(graph, list(graph.nodes), {}, fingerprints(), fresh_probe(), PlanOptions())
    rng = random.Random(3)
    results = {
        d.unique_id: NodeResult(d.unique_id, rng.choice(["success", "success", "error"]), 0.5)
        for d in the_plan.decisions
        if d.unique_id.startswith("model.")
    }
    report = RunReport("build", "prod", 1, graph=graph, plan=the_plan, results=results)
    svg = dag(render_run_html(report))
    nodes = drawn(svg, "node")
    assert len(nodes) == len(models) == 2000
    assert all(len(groups) == 1 for groups in nodes.values())
    assert_no_overlaps(svg)


def assert_no_overlaps(svg: ET.Element) -> None:
    columns: dict[float, list[tuple[float, float]]] = {}
    for kind in ("node", "source"):
        for groups in drawn(svg, kind).values():
            rect = box(groups[0])
            y, h = float(rect.get("y", "0")), float(rect.get("height", "0"))
            columns.setdefault(float(rect.get("x", "0")), []).append((y, y + h))
    for spans in columns.values():
        spans.sort()
        for (_, bottom), (top, _) in pairwise(spans):
            assert top >= bottom, "boxes overlap"


# -- writing -----------------------------------------------------------------------------------


def test_write_run_html_replaces_the_file_atomically(tmp_path: Path) -> None:
    target = tmp_path / "pictures" / "run.html"
    target.parent.mkdir()
    target.write_text("an older picture")
    report = mixed_report()
    assert write_run_html(report, target) == target
    assert target.read_text(encoding="utf-8") == render_run_html(report)
    assert [p.name for p in target.parent.iterdir()] == ["run.html"]
    assert target.stat().st_mode & 0o777 == 0o644  # readable by a log viewer, not owner-only


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "run.html"
    target.write_text("an older picture")

    def refuse(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("airflow_provider_orchestra_dbt.presentation.picture.os.replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write_run_html(mixed_report(), target)
    assert target.read_text() == "an older picture"
    assert [p.name for p in tmp_path.iterdir()] == ["run.html"]


def test_counts_in_the_picture_match_the_report() -> None:
    report = mixed_report()
    svg = dag(render_run_html(report))
    drawn_outcomes = Counter(outcome_of(g[0]) for g in drawn(svg, "node").values())
    counts = report.counts()
    assert {k: drawn_outcomes[k] for k in ("built", "reused", "failed", "skipped", "not_run")} == {
        k: counts[k] for k in ("built", "reused", "failed", "skipped", "not_run")
    }


def test_problems_are_listed_worst_first() -> None:
    page_text = render_run_html(mixed_report())
    match = re.search(r"<details class='problems' open>(.*?)</details>", page_text, re.S)
    assert match
    listed = re.findall(r"<td class='uid'>(?:<a [^>]*>)?([^<]+)", match.group(1))
    assert listed == [M1, T_SPAN, M2, T_M1]  # failed, then skipped, each in plan order


# -- side panels and the causes of skips ---------------------------------------------------------


def test_every_box_opens_a_panel_with_what_its_title_says() -> None:
    page_text = render_run_html(mixed_report())
    nodes = drawn(dag(page_text), "node")
    for uid in [*nodes, *drawn(dag(page_text), "source")]:
        text, _ = panel_of(page_text, uid)
        assert uid in text
    text, _ = panel_of(page_text, STG)
    assert text.split("\n")[1] == "stg_a"  # the name heads the panel
    assert facts(text) == {
        "decision": "build",
        "reason": "code changed (code)",
        "outcome": "built",
        "dbt status": "success",
        "execution time": "1.25s",
        "rows affected": "7",
    }
    failed = facts(panel_of(page_text, M1)[0])
    assert failed["dbt status"] == "error"
    assert failed["message"] == 'Runtime Error: relation <x> & "y"'
    # Panels are shown by CSS alone: hidden until they are the URL's target.
    assert re.search(r"\.panel \{ display: none;", page_text)
    assert ".panel:target { display: block; }" in page_text


def test_a_panel_lists_the_tests_on_its_node_with_their_reasons() -> None:
    text, _ = panel_of(render_run_html(mixed_report()), M1)
    assert "Tests (2)" in text
    tests = text.split("Tests (2)", 1)[1]
    assert tests.index("span_m1_s1") < tests.index("not_null_m1")  # failures first
    assert "failures\n3" in tests and "Got 3 results" in tests
    assert "reason\nm1 is being built" in tests


def test_a_skipped_node_names_the_failure_that_skipped_it() -> None:
    page_text = render_run_html(mixed_report())
    text, links = panel_of(page_text, M2)
    # m1 failed, and so did span_m1_s1, a test on s1, which m2 also reads.
    assert text.split("skipped because\n", 1)[1].startswith(
        "m1 failed\ntest span_m1_s1 on m1, s1 failed\n"
    )
    assert panel_href(page_text, M1) in links  # the cause links to the failed node's panel
    tip = title(drawn(dag(page_text), "node")[M2][0])
    assert f"skipped because: {M1}, {T_SPAN} failed" in tip
    # A skipped test says so too, in its node's panel (its sibling's failure is no cause),
    # and so do the tables.
    tests = panel_of(page_text, M1)[0].split("Tests (2)", 1)[1]
    assert "skipped because\nm1 failed\n" in tests
    assert f"skipped because {M1}, {T_SPAN} failed" in Page(page_text).all_text
    assert f"skipped because {M1} failed" in Page(page_text).all_text


def chain_report(results: dict[str, str], nodes: list[Any]) -> RunReport:
    graph = Graph(nodes)
    the_plan = plan(graph, list(graph.nodes), {}, fingerprints(), fresh_probe(), PlanOptions())
    return RunReport(
        "build",
        None,
        1,
        graph=graph,
        plan=the_plan,
        results={uid: NodeResult(uid, status) for uid, status in results.items()},
    )


def test_skip_causes_are_the_nearest_failures_upstream() -> None:
    a, b, c, d, e, f = (f"model.p.{x}" for x in "abcdef")
    report = chain_report(
        {a: "error", b: "error", c: "skipped", d: "success", e: "skipped", f: "skipped"},
        [
            source(SRC_A),
            model(a, SRC_A),
            model(b, a),  # failed after a failed: the failure nearer c
            model(c, b),
            model(d, SRC_A),
            model(e, c, d),  # skipped through c: its cause is c's
            model(f, e, a),  # two paths: a directly, b through e and c
        ],
    )
    assert skip_causes(report) == {c: (b,), e: (b,), f: (a, b)}


def test_a_failed_test_on_an_upstream_node_is_a_cause() -> None:
    a, b, c = "model.p.a", "model.p.b", "model.p.c"
    t_a, t_a2, t_b = "test.p.not_null_a", "test.p.unique_a", "test.p.not_null_b"
    report = chain_report(
        {a: "success", t_a: "fail", t_a2: "pass", b: "skipped", t_b: "skipped", c: "skipped"},
        [
            source(SRC_A),
            model(a, SRC_A),
            model(b, a),
            model(c, b),
            dbt_test(t_a, a),
            dbt_test(t_a2, a),
            dbt_test(t_b, b),
        ],
    )
    assert skip_causes(report) == {b: (t_a,), t_b: (t_a,), c: (t_a,)}
    page_text = render_run_html(report)
    text, links = panel_of(page_text, b)
    assert facts(text)["skipped because"] == "test not_null_a on a failed"
    # The panel of a lists the failed test; b's own test was skipped for the same reason.
    assert set(links) == {"#none", panel_href(page_text, a)}


def test_a_skip_without_a_failure_upstream_says_so() -> None:
    a = "model.p.a"
    report = chain_report({a: "skipped"}, [source(SRC_A), model(a, SRC_A)])
    assert skip_causes(report) == {a: ()}
    text, _ = panel_of(render_run_html(report), a)
    assert facts(text)["skipped because"] == "no failure upstream of it in this run"


def test_odd_names_get_distinct_safe_panel_ids_and_escaped_panels() -> None:
    odd = ["model.p.<u>x</u>", "model.p.a b", "model.p.a~20b", "model.p.caf\u00e9's"]
    nodes = [source(SRC_A), *(model(uid, SRC_A) for uid in odd)]
    report = chain_report({uid: "error" for uid in odd}, nodes)
    report = with_reason(report, odd[0], EVIL)
    page_text = render_run_html(report)
    page = Panels(page_text)
    assert not {"u", "script"} & set(Page(page_text).tags)
    targets = set()
    for uid in odd:
        text, _ = panel_of(page_text, uid)
        assert uid in text
        href = panel_href(page_text, uid)
        assert re.fullmatch(r"#[A-Za-z0-9._~-]+", href), href
        targets.add(href)
    assert len(targets) == len(odd)
    assert f"reason\n{EVIL}" in panel_of(page_text, odd[0])[0]
    assert len(page.ids) == len(set(page.ids))
