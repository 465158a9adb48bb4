"""The HTML pages with Flask's test client: history, run permalinks, the comparison with its chart.

The pages are parsed with the standard library's HTML parser, so the checks look at elements
(links, table rows, the SVG bars), not at substrings of the markup.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest

from api.charts import Bar, diverging_bars, fmt, heat_style
from tests.runs_support import golden_pair, single, store_finished

PAIR = golden_pair()


class Page(HTMLParser):
    """Elements of a page by tag: a list of (attributes, text inside) per tag name."""

    def __init__(self, html: str):
        super().__init__()
        self.elements: dict[str, list[dict]] = {}
        self.stack: list[dict] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag in ("td", "th", "li", "p", "div", "br"):
            self.handle_data(" ")  # cells read apart, as a browser shows them
        element = {"tag": tag, "attrs": dict(attrs), "text": ""}
        self.elements.setdefault(tag, []).append(element)
        if tag not in ("input", "link", "meta", "rect", "line", "br"):
            self.stack.append(element)

    def handle_endtag(self, tag):
        while self.stack:
            if self.stack.pop()["tag"] == tag:
                break

    def handle_data(self, data):
        for element in self.stack:
            element["text"] += data

    def all(self, tag: str, cls: str | None = None) -> list[dict]:
        found = self.elements.get(tag, [])
        if cls is not None:
            found = [e for e in found if cls in (e["attrs"].get("class") or "").split()]
        return found

    def links(self) -> list[str]:
        return [a["attrs"].get("href") for a in self.all("a")]


def get(client, url: str, status: int = 200) -> Page:
    response = client.get(url)
    assert response.status_code == status, response.data[:500]
    assert response.content_type.startswith("text/html")
    return Page(response.get_data(as_text=True))


def test_runs_page_lists_runs_with_permalinks_and_filters(client, app_sessions):
    job = store_finished(app_sessions, PAIR["request"], PAIR["response"], label="pair")
    page = get(client, "/runs")
    assert f"/runs/{job}/0" in page.links() and f"/runs/{job}/1" in page.links()
    radios = [i["attrs"]["value"] for i in page.all("input") if i["attrs"].get("name") == "a"]
    assert radios == [f"{job}/1", f"{job}/0"]
    forms = {f["attrs"]["action"] for f in page.all("form")}
    assert forms == {"/runs", "/compare"}
    filtered = get(client, "/runs?hasAblations=true&label=pair")
    assert [
        i["attrs"]["value"] for i in filtered.all("input") if i["attrs"].get("name") == "a"
    ] == [f"{job}/1"]
    kept = [i for i in filtered.all("input") if i["attrs"].get("name") == "label"]
    assert kept[0]["attrs"]["value"] == "pair"
    error = get(client, "/runs?hasAblations=maybe", 422)
    assert "hasAblations must be true or false" in error.all("p", "error")[0]["text"]


def test_runs_page_pages_with_a_cursor(client, app_sessions):
    first = store_finished(app_sessions, PAIR["request"], PAIR["response"])
    page = get(client, "/runs?limit=1")
    (older,) = [a for a in page.all("a", "older")]
    assert older["attrs"]["href"] == f"/runs?limit=1&cursor={first}%2F1"
    rest = get(client, older["attrs"]["href"])
    assert [i["attrs"]["value"] for i in rest.all("input") if i["attrs"].get("name") == "a"] == [
        f"{first}/0"
    ]


def test_run_permalink_shows_its_settings_and_its_baseline(client, app_sessions):
    job = store_finished(app_sessions, PAIR["request"], PAIR["response"])
    page = get(client, f"/runs/{job}/1")
    assert page.all("h1")[0]["text"].startswith(f"Run {job}/1")
    rows = {tr["text"].split()[0]: tr["text"] for tr in page.all("tr")}
    assert "attention_head:1:14,*,0" in rows["Ablations"]
    assert (
        fmt(
            PAIR["response"]["inferenceSubResponses"][1]["inferenceResponse"][
                "inferenceAndTokenData"
            ]["loss"]
        )
        in rows["Loss"]
    )
    assert f"/compare?a={job}/0&b={job}/1" in page.links()
    assert client.get(f"/runs/{job}").headers["Location"] == f"/runs/{job}/0"
    get(client, f"/runs/{job}/7", 404)


def test_run_without_baseline_offers_to_submit_it(client, app_sessions):
    job = store_finished(
        app_sessions,
        single(PAIR["request"], 1),
        {"inferenceSubResponses": [PAIR["response"]["inferenceSubResponses"][1]]},
    )
    page = get(client, f"/runs/{job}/0")
    assert any(f"actq compare {job}/0 --baseline" in p["text"] for p in page.all("p"))
    (form,) = [f for f in page.all("form") if f["attrs"]["action"].endswith("/baseline")]
    assert client.post(form["attrs"]["action"]).status_code == 403  # no CSRF token
    response = client.post(form["attrs"]["action"], data={"csrf_token": _form_token(page)})
    assert response.status_code == 303
    twin = response.headers["Location"]
    assert twin.startswith("/runs/") and twin.endswith("/0") and job not in twin
    detail = client.get("/v1" + twin).get_json()
    assert detail["request"] == single(PAIR["request"], 0)["subRequests"][0]
    assert detail["label"] == f"baseline of {job}/0"


def test_run_label_and_tags_are_edited_with_a_form(client, app_sessions):
    job = store_finished(app_sessions, PAIR["request"], PAIR["response"])
    token = _form_token(get(client, f"/runs/{job}/0"))
    edit = {"label": "clean", "tags": "a, b,,"}
    assert client.post(f"/runs/{job}/0/edit", data=edit).status_code == 403
    response = client.post(f"/runs/{job}/0/edit", data={**edit, "csrf_token": token})
    assert response.status_code == 303 and response.headers["Location"] == f"/runs/{job}/0"
    body = client.get(f"/v1/runs/{job}/0").get_json()
    assert (body["label"], body["tags"]) == ("clean", ["a", "b"])


def _form_token(page: Page) -> str:
    """The CSRF token the page wrote into its forms (its cookie is in the test client)."""
    tokens = {
        i["attrs"]["value"] for i in page.all("input") if i["attrs"].get("name") == "csrf_token"
    }
    assert len(tokens) == 1, tokens
    return tokens.pop()


def _deltas(index_a: int, index_b: int, group: str) -> list[float]:
    subs = PAIR["response"]["inferenceSubResponses"]
    data = [subs[i]["processingResponseDataByName"]["topKComponents"] for i in (index_a, index_b)]
    a, b = (d["activationsByGroupId"][group] for d in data)
    return [vb - va for va, vb in zip(a, b, strict=True)]


def test_compare_page_draws_the_nodes_that_moved_most(client, app_sessions):
    job = store_finished(app_sessions, PAIR["request"], PAIR["response"])
    page = get(client, f"/compare?a={job}/0&b={job}/1")
    loss = [
        s["inferenceResponse"]["inferenceAndTokenData"]["loss"]
        for s in PAIR["response"]["inferenceSubResponses"]
    ]
    assert page.all("strong")[2]["text"] == fmt(loss[1] - loss[0], signed=True)
    charts = page.all("svg", "chart")
    assert len(charts) == 2  # the loss and the nodes
    deltas = sorted((d for d in _deltas(0, 1, "act_times_grad") if d != 0), key=abs, reverse=True)[
        :15
    ]
    loss_bar = page.all("g", "bar")[0]  # the loss change itself, not a and b from 0
    assert loss_bar["attrs"]["class"] == ("bar pos" if loss[1] > loss[0] else "bar neg")
    bars = page.all("g", "bar")[1:]  # after the loss change
    assert [b["attrs"]["class"] for b in bars] == [
        "bar pos" if d > 0 else "bar neg" for d in deltas
    ]
    values = [t["text"] for t in page.all("text", "value")][-len(deltas) :]
    assert values == [fmt(d, signed=True) for d in deltas]
    differing = [tr["text"].split()[0] for tr in page.all("tr", "differs")]
    assert differing == ["ablations"]
    tokens = PAIR["response"]["inferenceSubResponses"][0]["inferenceResponse"][
        "inferenceAndTokenData"
    ]["tokensAsStrings"]
    per_token = page.all("table", "per-token")[0]
    assert all(json.dumps(t) in per_token["text"] for t in tokens)
    write_norm = get(client, f"/compare?a={job}/0&b={job}/1&group=write_norm")
    expected = sorted((d for d in _deltas(0, 1, "write_norm") if d != 0), key=abs, reverse=True)[
        :15
    ]
    assert [t["text"] for t in write_norm.all("text", "value")][-len(expected) :] == [
        fmt(d, signed=True) for d in expected
    ]


def test_compare_page_links_and_errors(client, app_sessions):
    job = store_finished(app_sessions, PAIR["request"], PAIR["response"])
    page = get(client, f"/compare?a={job}&b={job}/1&onlyDiff=1")
    links = page.links()
    assert f"/compare?a={job}%2F1&b={job}%2F0&group=act_times_grad&onlyDiff=1" in links
    assert f"/v1/compare?a={job}/0&b={job}/1&onlyDiff=1" in links
    settings = page.all("table", "settings")[0]
    assert settings["text"].split()[:3] == ["a", "b", "ablations"]  # only what differs
    form = get(client, "/compare")
    assert {i["attrs"]["name"] for i in form.all("input")} == {"a", "b"}
    missing = get(client, f"/compare?a={job}/0&b=nosuchjob/0", 404)
    assert "no job 'nosuchjob'" in missing.all("p", "error")[0]["text"]
    assert client.get("/").headers["Location"] == "/runs"
    with client.get("/static/actq.css") as css:
        assert css.status_code == 200 and b"svg.chart" in css.data


def test_diverging_bars_scale_around_zero():
    svg = str(diverging_bars([Bar("up", 2.0), Bar("down", -1.0), Bar("<x>", 0.5)], caption="c"))
    page = Page(svg)
    rects = page.all("rect")
    widths = [float(r["attrs"]["width"]) for r in rects]
    assert widths[0] == pytest.approx(2 * widths[1], abs=0.2)
    assert widths[0] == pytest.approx(4 * widths[2], abs=0.2)  # drawn to 0.1 units
    zero = float(page.all("line", "zero")[0]["attrs"]["x1"])
    assert float(rects[0]["attrs"]["x"]) == zero  # a rise starts at zero
    assert float(rects[1]["attrs"]["x"]) + widths[1] == pytest.approx(zero, abs=0.2)
    assert "&lt;x&gt;" in svg  # labels are escaped
    empty = Page(str(diverging_bars([], caption="none")))
    assert empty.all("text")[0]["text"] == "nothing to draw"


def test_heat_style_and_number_format():
    assert heat_style(None, 1.0) == "" and heat_style(1.0, 0.0) == ""
    assert heat_style(2.0, 1.0) == "background: rgba(43, 108, 176, 0.60)"
    assert heat_style(-0.5, 1.0) == "background: rgba(197, 48, 48, 0.30)"
    assert (fmt(None), fmt(1.23456), fmt(-0.5, True), fmt(0.25, True)) == (
        "\u2013",
        "1.235",
        "-0.5",
        "+0.25",
    )


def test_the_ablated_and_traced_nodes_are_never_cut_from_a_table():
    from api.page_views import pinned_keys, with_pinned

    def row(layer: int) -> dict:
        node = {"nodeType": "mlp_neuron", "layerIndex": layer, "tensorIndices": [3, 7]}
        return {"node": node, "label": f"L{layer}"}

    ablated = {"nodeIndex": row(9)["node"], "value": 0.0}
    traced = {"upstreamNodeToTrace": {**row(5)["node"], "passType": "forward"}}
    settings = [
        {"name": "ablations", "a": [], "b": [ablated]},
        {"name": "trace", "a": traced, "b": None},
    ]
    pinned = pinned_keys({"settings": settings})
    kept, hidden = with_pinned([row(i) for i in range(12)], 3, pinned)
    assert [r["label"] for r in kept] == ["L0", "L1", "L2", "L5", "L9"]
    assert hidden == 7 and [r["pinned"] for r in kept] == [False] * 3 + [True] * 2


def test_pages_write_times_in_one_format():
    import datetime as dt

    from api.page_views import utc

    naive = dt.datetime(2026, 12, 1, 10, 0, 0, 123456)
    assert utc(naive) == "2026-12-01T10:00:00Z"
    assert utc(naive.replace(tzinfo=dt.UTC)) == "2026-12-01T10:00:00Z"
    assert utc("2026-12-01T11:00:00+01:00") == "2026-12-01T10:00:00Z"
