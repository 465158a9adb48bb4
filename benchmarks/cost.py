"""The cost estimator (``models.checks.cost``) against measured costs, for ten request shapes.

Builds a random GPT-2 model (no download; gpt2-small's vocabulary and embedding width, fewer
layers by default so that it runs on a laptop), then for each shape runs the engine in its own
subprocess and measures the response's JSON bytes and the job's peak memory: the most resident
memory while the engine runs and the response is encoded, minus the resident memory with the
model loaded. Prints estimate, measurement and their ratio for both.

    flock /tmp/actq-bigmem.lock python benchmarks/cost.py [--layers 4] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.engine import PeakRss, rss_bytes, tdb_request  # noqa: E402


def build_model(directory: Path, layers: int) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from models.tokenizer import builtin_vocab_files

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=layers, n_embd=768, n_head=12)).save_pretrained(directory)
    vocab, merges = builtin_vocab_files()
    (directory / "vocab.json").write_bytes(Path(vocab).read_bytes())
    (directory / "merges.txt").write_bytes(Path(merges).read_bytes())


def prompt_of(tokenizer, n: int) -> str:
    """A prompt of exactly ``n`` tokens (" the" is one token of GPT-2's vocabulary)."""
    text = "Once" + " the" * (n - 1)
    assert len(tokenizer.encode(text)) == n
    return text


def tdb_shape(tokens: int, subs: int, k: int):
    def make(tokenizer) -> dict:
        request = tdb_request(prompt_of(tokenizer, tokens))
        base = dict(request["subRequests"][1], topAndBottomKForNodeTable=k)
        return {"subRequests": [base] * subs}

    return "batched_tdb", make


def batched_shape(tokens: int, top_k: int, num_tokens: int):
    def make(tokenizer) -> dict:
        prompt = prompt_of(tokenizer, tokens)
        groups = {"activation": ["mlp_post_act", "attn_qk_probs"]}
        specs = {
            "topKComponents": {
                "dstListByGroupId": groups,
                "topAndBottomK": top_k,
                "tokenIndex": None,
            },
            "scored": {
                "tokenScoringType": "upvoted_output_tokens",
                "numTokens": num_tokens,
                "dependsOnSpecName": "topKComponents",
            },
        }
        sub = {"inferenceRequestSpec": {"prompt": prompt}, "processingRequestSpecByName": specs}
        return {"inferenceSubRequests": [sub]}

    return "batched", make


SHAPES = {
    "tdb 1x20 k10": tdb_shape(20, 1, 10),
    "tdb 2x20 k10": tdb_shape(20, 2, 10),
    "tdb 1x60 k50": tdb_shape(60, 1, 50),
    "tdb 1x60 k200": tdb_shape(60, 1, 200),
    "tdb 2x100 k300": tdb_shape(100, 2, 300),
    "tdb 1x127 k1000": tdb_shape(127, 1, 1000),
    "tdb 4x60 k100": tdb_shape(60, 4, 100),
    "batched 60 k100 n10": batched_shape(60, 100, 10),
    "batched 60 k1000 n100": batched_shape(60, 1000, 100),
    "batched 100 k500 n500": batched_shape(100, 500, 500),
}


def measure(model_dir: str, shape: str, device: str) -> dict:
    import torch

    from models.checks.cost import estimate_cost
    from models.wire.protocol import parse_request
    from worker.engine import load_model, run
    from worker.execution import dumps

    torch.set_num_threads(2)
    model = load_model(model_dir, device)
    endpoint, make = SHAPES[shape]
    request = make(model.tokenizer)
    estimate = estimate_cost(
        endpoint, parse_request(endpoint, request), model.meta, model.tokenizer
    )
    loaded = rss_bytes()
    with PeakRss() as peak:
        text = dumps(run(endpoint, request, model))
    return {
        "shape": shape,
        "response_bytes": len(text.encode()) if isinstance(text, str) else len(text),
        "peak_bytes": peak.peak - loaded,
        "estimated_response_bytes": estimate.response_bytes,
        "estimated_memory_bytes": estimate.memory_bytes,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES))
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="1 layer, 2 shapes: does it run")
    args = parser.parse_args()
    if args.quick:
        args.layers, args.shapes = 1, args.shapes[:2]
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], args.device)))
        return
    with tempfile.TemporaryDirectory() as folder:
        build_model(Path(folder), args.layers)
        print(
            f"{'shape':24} {'resp est MB':>11} {'measured':>9} {'ratio':>6} "
            f"{'peak est MB':>11} {'measured':>9} {'ratio':>6}"
        )
        for shape in args.shapes:
            out = subprocess.run(
                [sys.executable, __file__, "--device", args.device, "--one", folder, shape],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            mb = 2**20
            print(
                f"{shape:24} {r['estimated_response_bytes'] / mb:11.2f} "
                f"{r['response_bytes'] / mb:9.2f} "
                f"{r['estimated_response_bytes'] / r['response_bytes']:6.2f} "
                f"{r['estimated_memory_bytes'] / mb:11.1f} {r['peak_bytes'] / mb:9.1f} "
                f"{r['estimated_memory_bytes'] / max(r['peak_bytes'], 1):6.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
