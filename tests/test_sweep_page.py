"""The sweep page: its heatmap over HTTP (each cell a link to its point's comparison) and in
headless Chromium, with a screenshot kept under ``test-artifacts/`` for a person to look at."""

from __future__ import annotations

import re

from tests.test_browser import ARTIFACTS, browse, server  # noqa: F401 (a fixture)
from tests.test_sweeps import BASE, _run, _submit


def test_the_sweep_page_draws_a_heatmap_linking_each_cell(app, client, engine_model):
    sweep = _submit(client, {"base": BASE, "grid": {"heads": "all"}})
    _run(app, engine_model, sweep["id"])
    view = client.get(f"/v1/sweeps/{sweep['id']}").get_json()
    page = client.get(f"/sweeps/{sweep['id']}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "<script" not in html
    assert html.count('<rect class="cell"') == 12  # 3 layers x 4 heads
    links = re.findall(r'<a href="(/compare\?a=[^"]+)"><rect class="cell"', html)
    expected = [p["compareUrl"].replace("&", "&amp;") for p in view["points"]]
    assert sorted(links) == sorted(expected)
    for label in ("L0", "L2", "H0", "H3"):
        assert f">{label}</text>" in html
    compared = client.get(view["points"][0]["compareUrl"])
    assert compared.status_code == 200 and "Nodes that moved most" in compared.get_data(
        as_text=True
    )
    assert client.get("/sweeps/nope").status_code == 404


def test_the_sweep_page_renders_in_chromium(app, client, engine_model, server, tmp_path):  # noqa: F811
    sweep = _submit(client, {"base": BASE, "grid": {"heads": "all"}})
    _run(app, engine_model, sweep["id"])
    url = f"{server}/sweeps/{sweep['id']}"
    dom = browse(url, tmp_path)
    assert dom.count('class="cell"') == 12
    assert 'class="chart heatmap"' in dom and "Points that moved the loss most" in dom
    path = ARTIFACTS / "sweep.png"
    path.unlink(missing_ok=True)
    browse(url, tmp_path, screenshot="sweep.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
