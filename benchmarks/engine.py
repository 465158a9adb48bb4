"""Engine timing and memory against the plain Hugging Face forward+backward floor.

Builds a random model (no download) in a temporary directory: `--family gpt2` (default) a
gpt2-small-sized one (12 layers, d_model 768; GPT2Config), `--family llama` a Llama-shaped one of
about 128M parameters (12 layers, d 768, 12 query heads in 4 K/V groups, gated SiLU MLP of 2560,
RMSNorm, rotary, tied embeddings), `--family neox` a Pythia-160M-shaped one (12 layers, d 768,
parallel residual, partial rotary 0.25, MLP 3072, 50304-row untied unembedding), and
`--family neox-sequential` the same with the sequential residual; the non-GPT-2 ones use
GPT-2's vocabulary through a tokenizer.json. Then for 20 and 60 prompt tokens it prints, per
request kind:
  * the engine's time per request (min / median / max of 5 after a warm-up and one more
    request, which the peak memory is read over),
  * the plain HF model's (AutoModelForCausalLM) forward+backward time of the same batch in the same process,
  * the ratio engine / floor, and against the stricter floor of the same pass with the weights
    frozen (gradients for activations only, as actq computes them),
  * against DESIGN.md's physical limit: that frozen pass plus the vocabulary projections the
    response needs, one GEMM of as many directions as the request scores (counted while the
    engine answers it) against the unembedding, timed in the same process (target 1.25),
  * peak resident memory while serving (the warm-up and one more request, polled by a thread
    that the timed requests run without), against the memory of the loaded model alone.
Each (kind, length) runs in its own subprocess so that peak-memory readings do not mix.

    python benchmarks/engine.py [--family gpt2|llama|neox|neox-sequential] [--tokens 20 60] [--repeats 5]
                                [--device cpu|cuda] [--kinds batched_tdb ...]
    python benchmarks/engine.py --quick   # a 2-layer model, 8 tokens, 1 repeat: does it still run
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


GPT2_SMALL = {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 1024}
# --quick: the smallest model every request below fits (its ablation is at layer 3, neuron 100)
QUICK = {"n_layer": 4, "n_embd": 32, "n_head": 2, "n_positions": 64}


def build_model(directory: Path, family: str = "gpt2", sizes: dict | None = None) -> None:
    import torch
    import transformers

    from models.tokenizer import builtin_vocab_files

    torch.manual_seed(0)
    if family != "gpt2":
        from tests.family_models import gpt2_tokenizer

        config = FAMILY_CONFIGS[family]()
        transformers.AutoModelForCausalLM.from_config(config).save_pretrained(directory)
        gpt2_tokenizer().save(str(directory / "tokenizer.json"))
        return
    config = transformers.GPT2Config(**(sizes or GPT2_SMALL))
    transformers.GPT2LMHeadModel(config).save_pretrained(directory)
    vocab, merges = builtin_vocab_files()
    (directory / "vocab.json").write_bytes(Path(vocab).read_bytes())
    (directory / "merges.txt").write_bytes(Path(merges).read_bytes())


def _llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=50257,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=4,
        intermediate_size=2560,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )


def _neox_config(parallel: bool = True):
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=50304,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=2048,
        rotary_pct=0.25,
        use_parallel_residual=parallel,
        tie_word_embeddings=False,
    )


FAMILY_CONFIGS = {
    "llama": _llama_config,
    "neox": _neox_config,
    "neox-sequential": lambda: _neox_config(parallel=False),
}
MODEL_NAMES = {
    "gpt2": "gpt2-small-sized",
    "llama": "Llama-shaped (~128M)",
    "neox": "Pythia-160M-shaped",
    "neox-sequential": "Pythia-160M-shaped, sequential residual",
}


def prompt_of(tokenizer, n: int) -> str:
    words = (" the cat sat on a mat and looked at the dog while it rained outside" * 20).split(" ")
    text = "Once"
    for word in words:
        if len(tokenizer.encode(text)) >= n:
            break
        if word:
            text += " " + word
    assert len(tokenizer.encode(text)) == n, (n, len(tokenizer.encode(text)))
    return text


def node_table_request(prompt: str) -> dict:
    groups = {
        "write_norm": [
            "resid_post_embedding_norm",
            "mlp_write_norm",
            "unflattened_attn_write_norm",
        ],
        "act_times_grad": [
            "token_attribution",
            "mlp_act_times_grad",
            "unflattened_attn_act_times_grad",
        ],
        "direction_write": [
            "resid_post_embedding_proj_to_final_residual_grad",
            "mlp_write_to_final_residual_grad",
            "unflattened_attn_write_to_final_residual_grad",
        ],
        "activation": ["always_one", "mlp_post_act", "attn_qk_probs"],
    }
    return {
        "inferenceRequestSpec": {
            "prompt": prompt,
            "lossFnConfig": {
                "name": "logit_diff",
                "targetTokens": [" mat"],
                "distractorTokens": [" dog"],
            },
        },
        "multipleTopKDerivedScalarsRequestSpec": {"dstListByGroupId": groups, "topAndBottomK": 10},
    }


def tdb_request(prompt: str) -> dict:
    base = {
        "prompt": prompt,
        "targetTokens": [" mat"],
        "distractorTokens": [" dog"],
        "componentTypeForMlp": "neuron",
        "componentTypeForAttention": "attention_head",
        "topAndBottomKForNodeTable": 10,
        "hideEarlyLayersWhenAblating": False,
    }
    ablation = {
        "nodeIndex": {
            "nodeType": "mlp_neuron",
            "tensorIndices": [2, 100],
            "layerIndex": 3,
            "passType": "forward",
        },
        "value": 0.0,
    }
    return {"subRequests": [dict(base, nodeAblations=[ablation]), dict(base, nodeAblations=[])]}


KINDS = {
    "multiple_top_k_derived_scalars": (node_table_request, 1),
    "batched_tdb": (tdb_request, 2),
}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Polls the resident set size in a thread: the peak while serving, not while loading."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self._stop = interval, rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def touch_weights(weights) -> None:
    """Read every weight once, so lazily mapped pages count as loaded before serving starts."""
    tensors = [t for t in (weights.W_E, weights.W_P, weights.W_U_) if t is not None] + [
        v for lw in weights.layers for v in vars(lw).values() if hasattr(v, "sum")
    ]
    for t in tensors:
        float(t.sum())


def hf_forward_backward(hf, tokens, repeats: int, device: str, embeds: bool = False) -> list[float]:
    """Seconds of HF forward+backward of a logit difference, `repeats` times after a warm-up."""
    import torch

    out = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        if embeds:  # weights frozen: the gradient starts at the input embeddings
            x = hf.get_input_embeddings()(tokens).detach().requires_grad_(True)
            logits = hf(inputs_embeds=x).logits
        else:
            logits = hf(tokens).logits
        (logits[:, -1, 100] - logits[:, -1, 200]).sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()
        if i:
            out.append(time.perf_counter() - start)
        hf.zero_grad(set_to_none=True)
    return out


class ScoredDirections:
    """Counts the directions the engine scores against the vocabulary (write and read scores,
    worker.engine.tokens), the rows of the vocabulary GEMM the physical limit includes."""

    def __init__(self):
        self.count = 0

    def __enter__(self) -> ScoredDirections:
        # patched where the scorer looks them up (token_lists imports them by name: patching
        # only worker.engine.tokens counted nothing once the scorer moved there)
        from worker.engine import token_lists

        self._module = token_lists
        self._saved = (token_lists.write_scores, token_lists.read_scores)

        def counted(score):
            def scored(weights, directions):
                self.count += directions.shape[0]
                return score(weights, directions)

            return scored

        token_lists.write_scores, token_lists.read_scores = (counted(s) for s in self._saved)
        return self

    def __exit__(self, *exc) -> None:
        self._module.write_scores, self._module.read_scores = self._saved


def vocab_gemm(hf, n_directions: int, repeats: int, device: str) -> list[float]:
    """Seconds of one [n, d] x [d, V] product against HF's unembedding, `repeats` times after a
    warm-up: the vocabulary projections of the physical limit (DESIGN.md)."""
    import torch

    unembedding = hf.get_output_embeddings().weight.detach()  # [V, d]
    directions = torch.randn(n_directions, unembedding.shape[1], device=device)
    out = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        scores = directions @ unembedding.T
        if device == "cuda":
            torch.cuda.synchronize()
        if i:
            out.append(time.perf_counter() - start)
        del scores
    return out


def measure(model_dir: str, kind: str, n_tokens: int, repeats: int, device: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from worker.engine import load_model, run

    torch.set_num_threads(os.cpu_count() or 1)
    gc.collect()
    runtime = rss_bytes()  # interpreter, torch, transformers: before any weight is read
    model = load_model(model_dir, device)
    touch_weights(model.weights)
    gc.collect()
    loaded = rss_bytes()
    w = model.weights
    param_bytes = 4 * (
        sum(t.numel() for t in (w.W_E, w.W_P, w.W_U_) if t is not None)
        + sum(
            sum(v.numel() for v in vars(lw).values() if hasattr(v, "numel"))
            for lw in model.weights.layers
        )
    )
    make, batch = KINDS[kind]
    request = make(prompt_of(model.tokenizer, n_tokens))
    times = []
    # the peak over the warm-up and one more request; the timed ones run without the polling
    # thread (on 2 cores it took a few % of the engine's time, and the floors are timed without it)
    with PeakRss() as rss:
        with ScoredDirections() as scored:
            run(kind, request, model)  # warm-up, counting the directions a request scores
        run(kind, request, model)
    for _ in range(repeats):
        start = time.perf_counter()
        response = run(kind, request, model)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = rss.peak
    json_bytes = len(json.dumps(response, separators=(",", ":")).encode())
    del model
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    tokens = torch.randint(0, 50000, (batch, n_tokens), device=device)
    floor = hf_forward_backward(hf, tokens, repeats, device)
    for p in hf.parameters():  # the stricter floor: gradients for activations only, like actq
        p.requires_grad_(False)
    floor_frozen = hf_forward_backward(hf, tokens, repeats, device, embeds=True)
    gemm = vocab_gemm(hf, scored.count, repeats, device) if scored.count else [0.0] * repeats
    return {
        "kind": kind,
        "tokens": n_tokens,
        "times": times,
        "floor": floor,
        "floor_frozen": floor_frozen,
        "scored_directions": scored.count,
        "vocab_gemm": gemm,
        "runtime_rss": runtime,
        "loaded_rss": loaded,
        "peak_rss": peak,
        "param_bytes": param_bytes,
        "response_bytes": json_bytes,
    }


def _print_row(kind: str, n: int, r: dict) -> None:
    med, floor = statistics.median(r["times"]), statistics.median(r["floor"])
    print(
        f"{kind:32} {n:6d} {min(r['times']):7.3f} {med:7.3f} {max(r['times']):7.3f} "
        f"{floor:7.3f} {med / floor:6.2f} {r['param_bytes'] / 2**20:9.0f} "
        f"{r['loaded_rss'] / 2**20:7.0f} {r['peak_rss'] / 2**20:7.0f} "
        f"{r['peak_rss'] / r['loaded_rss']:11.2f} {r['response_bytes'] / 1024:8.0f}"
    )
    extra = (r["peak_rss"] - r["loaded_rss"]) / r["param_bytes"]
    frozen = statistics.median(r["floor_frozen"])
    print(
        f"{'':32} {'':6} HF f+b with frozen weights {frozen:.3f} s (ratio "
        f"{med / frozen:.2f}); serving adds {extra:.2f}x the weights' size "
        f"(process before loading: {r['runtime_rss'] / 2**20:.0f} MiB)"
    )
    gemm = statistics.median(r["vocab_gemm"])
    limit = frozen + gemm
    print(
        f"{'':32} {'':6} physical limit {limit:.3f} s = frozen {frozen:.3f} + vocabulary GEMM "
        f"of {r['scored_directions']} directions {gemm:.3f}: ratio {med / limit:.2f} (target 1.25)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, nargs="+", default=[20, 60], help="prompt lengths")
    parser.add_argument("--repeats", type=int, default=5, help="timed requests per measurement")
    parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), help="request kinds to time")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a tiny model, 8 tokens, 1 repeat: checks that the benchmark runs (figures mean nothing)",
    )
    parser.add_argument("--family", choices=list(MODEL_NAMES), default="gpt2")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.tokens, args.repeats = [8], 1
    if args.child:
        model_dir, kind, n = args.child
        print(json.dumps(measure(model_dir, kind, int(n), args.repeats, args.device)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / f"{args.family}-random"
        build_model(model_dir, args.family, QUICK if args.quick else None)
        size = "tiny (--quick)" if args.quick else MODEL_NAMES[args.family]
        print(f"{size} random model, device {args.device}, {os.cpu_count()} CPU threads")
        header = f"{'request':32} {'tokens':>6} {'min':>7} {'median':>7} {'max':>7} {'HF f+b':>7} {'ratio':>6} {'model MB':>9} {'loaded':>7} {'peak':>7} {'peak/loaded':>11} {'JSON KB':>8}"
        print(header)
        for kind in args.kinds:
            for n in args.tokens:
                if args.quick:  # in this process: peak memory means nothing in a quick run
                    r = measure(str(model_dir), kind, n, args.repeats, args.device)
                    _print_row(kind, n, r)
                    continue
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--repeats",
                        str(args.repeats),
                        "--device",
                        args.device,
                        "--child",
                        str(model_dir),
                        kind,
                        str(n),
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                _print_row(kind, n, json.loads(out.strip().splitlines()[-1]))
        print(
            "times in seconds; ratio = engine median / HF forward+backward median (same process, same "
            "tokens); loaded = resident MiB with the model loaded and read; peak = the most resident "
            "MiB while serving the warm-up and one more request"
        )


if __name__ == "__main__":
    main()
