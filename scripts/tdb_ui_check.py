"""The manual check of TDB's unmodified UI against actq, in headless Chromium (not run by CI).

CI cannot fetch TDB's repository or npm packages, so this script is run by hand; what it saw is
kept as replayed request sequences in ``tests/test_tdb_ui_replay.py``. It

1. builds TDB's ``neuron_viewer`` (``npm ci``, then ``parcel build`` with
   ``NEURON_VIEWER_ACTIVATION_SERVER_URL`` set to actq's URL: the UI's server is fixed at build);
2. starts ``actq up`` on its own port and data directory (``--model``, ``--mlp-autoencoder``,
   ``--attention-autoencoder`` are passed on) and builds records over a small corpus
   (``actq records build``);
3. serves the built UI on ``http://localhost:UI_PORT`` (TDB's CORS rule wants ``localhost``),
   with every unknown path answered by ``index.html`` as the UI's router needs;
4. drives it with Playwright in Debian's Chromium (``/usr/bin/chromium``, no browser download):
   the welcome page's datasets, the TDB page (node table, logits, tokens), ablate then remove the
   ablation, trace upstream, a second prompt, a neuron's and a head's record pages (with a prompt
   run from the node page, which sends ``normalizeActivationsUsingNeuronRecord``), and in latent
   mode a latent's record page;
5. writes a screenshot per step, ``requests.json`` (every request to actq: path, body, status,
   start and end in seconds) and ``report.json`` (each check, passed or not) under ``--out``.

    git --git-dir=TDB.git archive HEAD neuron_viewer | tar -x -C /tmp/tdb
    pip install playwright
    python scripts/tdb_ui_check.py --viewer /tmp/tdb/neuron_viewer --out /tmp/tdb-check
    python scripts/tdb_ui_check.py --viewer ... --model ../shared/golden/oracle-gpt2-tiny \
        --mlp-autoencoder ../shared/golden/autoencoders/ae-mlp-post-act-tiny

Exit status 1 when a check failed.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SENTENCES = [
    "Paris is the capital of France, and Ottawa is the capital of Canada.",
    "The river runs through the old city, past the music hall and the cathedral.",
    "In the first year of the war the team moved to a new state by the river.",
    "She wrote music for film and theatre, and her first album came out in Paris.",
    "The city council met during the winter to plan the new bridge over the river.",
]
# 40 documents, each the five sentences rotated and cut, so that top sequences differ
CORPUS = [" ".join((SENTENCES * 2)[i % 5 : i % 5 + 1 + i % 4]) for i in range(40)]
# Explanations attached before the UI is opened: its node pages and node table show them.
EXPLAINED = [
    ("mlp_post_act", 1, 5, "capital cities (attached by tdb_ui_check)"),
    ("attn_write_norm", 1, 0, "attends to the previous comma (attached by tdb_ui_check)"),
]


def build(viewer: Path, api_url: str) -> Path:
    if not (viewer / "node_modules").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=viewer, check=True)
    dist = viewer / f"dist-{api_url.split(':')[-1].split('/')[0]}"
    env = {**os.environ, "NEURON_VIEWER_ACTIVATION_SERVER_URL": api_url}
    command = ["npx", "parcel", "build", "src/index.html", "--dist-dir", str(dist), "--no-cache"]
    subprocess.run(command, cwd=viewer, env=env, check=True)
    return dist


def serve(dist: Path, port: int) -> http.server.ThreadingHTTPServer:
    class SinglePage(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(dist), **kwargs)

        def send_head(self):
            if not (dist / self.path.split("?")[0].lstrip("/")).is_file():
                self.path = "/index.html"
            return super().send_head()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), SinglePage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def start_actq(args, data_dir: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "api.cli", "up", "--port", str(args.api_port)]
    command += ["--data-dir", str(data_dir), "--model", args.model]
    for flag in ("mlp_autoencoder", "attention_autoencoder"):
        if getattr(args, flag):
            command += [f"--{flag.replace('_', '-')}", getattr(args, flag)]
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{args.api_port}/healthz", timeout=2)
        raise SystemExit(f"port {args.api_port} already answers; pick another --api-port")
    except OSError:
        pass
    log = open(data_dir / "up.log", "w")
    process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{args.api_port}/v1/models", timeout=5):
                return process
        except OSError:
            if process.poll() is not None:
                raise SystemExit(f"actq up exited; see {data_dir / 'up.log'}") from None
            time.sleep(1)
    raise SystemExit("actq up did not answer in 300 s")


def build_records(args, data_dir: Path, kinds: list[str]) -> None:
    corpus = data_dir / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n")
    command = [sys.executable, "-m", "api.cli", "records", "build", str(corpus)]
    command += ["--url", f"http://127.0.0.1:{args.api_port}", "--seq-len", "16", "--kinds", *kinds]
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    for dst, layer, index, text in EXPLAINED:
        put = urllib.request.Request(
            f"http://127.0.0.1:{args.api_port}/v1/nodes/{dst}/{layer}/{index}/explanation",
            data=json.dumps({"explanation": text, "score": 0.25}).encode(),
            headers={"Content-Type": "application/json"},
            method="PUT",
        )
        urllib.request.urlopen(put, timeout=30).close()


class Recorder:
    """Every request the page sends to actq, with its start and end time and its answer."""

    def __init__(self, page, api: str):
        self.t0 = time.monotonic()
        self.rows: list[dict] = []
        self.started: dict[int, float] = {}
        self.console: list[str] = []
        page.on("request", lambda r: self.started.__setitem__(id(r), self.now()))
        page.on("requestfinished", lambda r: self.done(r, api))
        page.on("requestfailed", lambda r: self.done(r, api, failure=r.failure))
        page.on("console", lambda m: m.type == "error" and self.console.append(m.text[:300]))

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 3)

    def done(self, request, api: str, failure: str | None = None) -> None:
        if not request.url.startswith(api):
            return
        response = None if failure else request.response()
        self.rows.append(
            {
                "method": request.method,
                "path": request.url[len(api) :],
                "body": request.post_data,
                "status": response.status if response else None,
                "failure": failure,
                "start": self.started.get(id(request)),
                "end": self.now(),
                "answer": _text(response) if response and response.status >= 400 else None,
            }
        )

    def count(self, path: str) -> int:
        return sum(1 for r in self.rows if r["path"] == path)


def _text(response) -> str | None:
    try:
        return response.text()[:2000]
    except Exception:  # the page moved on before the body was read
        return None


class Checks:
    def __init__(self, out: Path):
        self.out, self.results = out, []

    def __call__(self, name: str, ok: bool, detail: str = "") -> bool:
        self.results.append({"check": name, "ok": bool(ok), "detail": detail})
        print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}", flush=True)
        return ok

    def shot(self, page, name: str) -> None:
        page.screenshot(path=str(self.out / f"{name}.png"), full_page=True)


def wait_for(page, recorder: Recorder, path: str, after: int, timeout: float = 60) -> bool:
    """Wait until the page got more than ``after`` answers on ``path`` and is idle again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if recorder.count(path) > after:
            page.wait_for_timeout(1500)
            return True
        page.wait_for_timeout(200)
    return False


def open_actions(page, row: str):
    """Open the node table's Actions menu of the row named ``row`` (the first row if None)."""
    page.get_by_role("button", name="Actions").first.click()
    page.wait_for_timeout(300)


def drive_tdb(page, rec: Recorder, check: Checks, base: str, dataset: str) -> None:
    page.goto(f"{base}/{dataset}/tdb_alpha")
    check("tdb: first batched_tdb", wait_for(page, rec, "/batched_tdb", 0))
    page.get_by_role("heading", name="Node table").wait_for(timeout=30000)
    page.wait_for_timeout(2000)
    body = page.inner_text("body")
    check("tdb: logits shown", "Next token candidates" in body and "loss:" in body)
    check("tdb: node table rows", page.get_by_role("button", name="Actions").count() > 0)
    check("tdb: token display", "Index" in body and "Ottawa" in body)
    wait_for(page, rec, "/score", 0, timeout=20)
    if "_" not in dataset:  # in latent mode the node table lists latents
        shown = [t for _, _, _, t in EXPLAINED if t in page.inner_text("body")]
        check("tdb: attached explanations in the node table", bool(shown), str(shown))
    check.shot(page, "tdb")
    loss_clean = body.split("loss:")[1].split("\n")[0].strip()

    n = rec.count("/batched_tdb")
    open_actions(page, None)
    page.get_by_text("Ablate", exact=True).click()
    check("tdb: ablated pair answered", wait_for(page, rec, "/batched_tdb", n))
    body = page.inner_text("body")
    check("tdb: ablation shown", "Ablated to value" in body, "ablation table")
    check("tdb: ablated pair panes", body.count("loss:") >= 2, f"{body.count('loss:')} losses")
    check.shot(page, "tdb_ablated")

    n = rec.count("/batched_tdb")
    page.get_by_role("button", name="Remove", exact=True).first.click()
    wait_for(page, rec, "/batched_tdb", n, timeout=20)
    page.wait_for_timeout(1500)
    body = page.inner_text("body")
    check("tdb: ablation removed", "Ablated to value" not in body)
    loss_after = body.split("loss:")[1].split("\n")[0].strip() if "loss:" in body else None
    check("tdb: clean again", loss_after == loss_clean, f"{loss_after} vs {loss_clean}")
    check.shot(page, "tdb_unablated")

    n = rec.count("/batched_tdb")
    open_actions(page, None)
    items = page.get_by_role("menuitem").all_inner_texts()
    trace = next((t for t in items if t.startswith("Trace")), None)
    check("tdb: trace menu", trace is not None, str(items))
    if trace:
        page.get_by_role("menuitem", name=trace, exact=True).click()
        check("tdb: traced answer", wait_for(page, rec, "/batched_tdb", n))
        pairs = [r for r in rec.rows if r["path"] == "/batched_tdb"]
        last = json.loads(pairs[-1]["body"] or "{}")
        traced = any(s.get("upstreamNodeToTrace") for s in last.get("subRequests", []))
        check("tdb: request has upstreamNodeToTrace", traced)
        body = page.inner_text("body")
        check("tdb: trace shown", "Tracing" in body or "upstream" in body.lower())
        check.shot(page, "tdb_traced")
        page.keyboard.press("Escape")

    n = rec.count("/batched_tdb")
    page.get_by_role("button", name="Add second prompt").click()
    check("tdb: second prompt answered", wait_for(page, rec, "/batched_tdb", n))
    body = page.inner_text("body")
    check("tdb: two prompts", page.locator("textarea").count() >= 2, "textareas")
    check.shot(page, "tdb_two_prompts")
    if "_" in dataset:  # latent mode: the AE switches the UI shows when model_info has AEs
        for switch in ("Use MLP autoencoders", "Use Attention autoencoders"):
            if page.get_by_text(switch, exact=True).count():
                n = rec.count("/batched_tdb")
                page.get_by_text(switch, exact=True).click()
                check(f"tdb: {switch} answered", wait_for(page, rec, "/batched_tdb", n))
                body = json.loads([r for r in rec.rows if r["path"] == "/batched_tdb"][-1]["body"])
                spec = body["subRequests"][0]
                check(f"tdb: {switch} asks for latents", "autoencoder" in json.dumps(spec))
                check(f"tdb: {switch} node table", "Node table" in page.inner_text("body"))
                check.shot(page, "tdb_" + switch.split()[1].lower() + "_latents")
    errors = [
        r
        for r in rec.rows
        if r["status"] and r["status"] >= 400 and (r["path"], r["status"]) != ("/explain", 501)
    ]
    check("tdb: no error answers but /explain's 501", not errors, json.dumps(errors)[:500])


KINDS = {"mlp_post_act": "mlp_neuron", "attn_write_norm": "attention_head"}


def drive_node(page, rec, check, base: str, dataset: str, kind: str, layer: int, index: int):
    name = f"node_{kind}_{layer}_{index}"
    page.goto(f"{base}/{dataset}/{kind}/{layer}/{index}")
    route = "/attention_head_record" if kind == "attention_head" else "/neuron_record"
    check(f"{name}: record answered", wait_for(page, rec, route, 0))
    page.wait_for_timeout(1500)
    body = page.inner_text("body")
    check(f"{name}: top and random sequences", "Top" in body and "Random" in body)
    wanted = [t for d, lay, i, t in EXPLAINED if (lay, i) == (layer, index) and kind in KINDS[d]]
    if wanted:
        check(f"{name}: attached explanation shown", wanted[0] in body)
    failed = [r for r in rec.rows if r["path"] == route and r["status"] != 200]
    check(f"{name}: record 200", not failed, json.dumps(failed)[:300])
    box = page.locator("textarea").last
    if box.count():
        n = len(rec.rows)
        box.fill("Paris is the capital of France")
        box.press("Meta+Enter")  # the UI's only way to run it
        deadline = time.monotonic() + 60
        while len(rec.rows) == n and time.monotonic() < deadline:
            page.wait_for_timeout(200)
        page.wait_for_timeout(1500)
        ran = rec.rows[n:]
        normalized = [
            r for r in ran if "normalizeActivationsUsingNeuronRecord" in (r["body"] or "")
        ]
        check(
            f"{name}: prompt run",
            bool(ran) and all(r["status"] == 200 for r in ran),
            json.dumps([(r["path"], r["status"]) for r in ran]),
        )
        check(f"{name}: normalized by the record", bool(normalized))
    body = page.inner_text("body")
    check(f"{name}: no 'Failed to load'", "Failed to load" not in body)
    check.shot(page, name)


def drive(args, out: Path, api: str, ui: str) -> Checks:
    from playwright.sync_api import sync_playwright

    check = Checks(out)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=args.chromium, args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page(viewport={"width": 1600, "height": 1200})
        rec = Recorder(page, api)
        page.goto(f"{ui}/")
        wait_for(page, rec, "/model_info", 0)
        body = page.inner_text("body")
        check("welcome: datasets listed", "MLP neurons" in body, body[:300].replace("\n", " | "))
        link = page.get_by_role("link", name="Link to Transformer Debugger")
        href = link.get_attribute("href") if link.count() else None
        check("welcome: TDB link", href is not None, str(href))
        check.shot(page, "welcome")
        dataset = (href or f"/{args.model}/").split("/")[1]
        drive_tdb(page, rec, check, ui, dataset)
        first = dataset.split("_")[0]
        drive_node(page, rec, check, ui, first, "mlp_neuron", 1, 5)
        drive_node(page, rec, check, ui, first, "attention_head", 1, 0)
        if "_" in dataset:
            kind = (
                "mlp_autoencoder_latent" if args.mlp_autoencoder else "attention_autoencoder_latent"
            )
            drive_node(page, rec, check, ui, dataset, kind, 0, 3)
        check("no failed requests", not [r for r in rec.rows if r["failure"]])
        (out / "requests.json").write_text(json.dumps(rec.rows, indent=1))
        (out / "console.json").write_text(json.dumps(rec.console, indent=1))
        browser.close()
    return check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--viewer", type=Path, required=True, help="TDB's neuron_viewer folder")
    parser.add_argument("--out", type=Path, default=REPO / "test-artifacts" / "tdb-ui")
    parser.add_argument("--api-port", type=int, default=8765)
    parser.add_argument("--ui-port", type=int, default=8766)
    parser.add_argument("--model", default="tiny-gpt2")
    parser.add_argument("--mlp-autoencoder")
    parser.add_argument("--attention-autoencoder")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--no-build", action="store_true", help="reuse dist-PORT")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    api = f"http://127.0.0.1:{args.api_port}"
    viewer = args.viewer.resolve()
    dist = viewer / f"dist-{args.api_port}" if args.no_build else build(viewer, api)
    data = args.out / "actq-data"  # actq's database, broker and up.log, kept for a look
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir()
    process = start_actq(args, data)
    try:
        kinds = ["mlp_neuron", "attention_head"]
        kinds += ["mlp_autoencoder_latent"] * bool(args.mlp_autoencoder)
        kinds += ["attention_autoencoder_latent"] * bool(args.attention_autoencoder)
        build_records(args, data, kinds)
        server = serve(dist, args.ui_port)
        check = drive(args, args.out, api, f"http://localhost:{args.ui_port}")
        server.shutdown()
    finally:
        process.terminate()
        process.wait(30)
    (args.out / "report.json").write_text(json.dumps(check.results, indent=1))
    failed = [r for r in check.results if not r["ok"]]
    print(f"{len(check.results) - len(failed)}/{len(check.results)} checks passed; see {args.out}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
