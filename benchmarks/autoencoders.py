"""TDB's UI pair in latent mode with 32,768-latent AEs on every layer of a gpt2-small-sized
model: time against the floor, peak memory against resident (issue 11).

The model is the random gpt2-small-sized one of ``benchmarks/engine.py``; the AEs are random and
built in memory, shaped as TDB's released gpt2-small AEs: an MLP AE on ``mlp_post_act`` (n 3072)
and an attention AE on ``resid_delta_attn`` (n 768), 32,768 latents each, on all 12 layers
(12.5 GB of float32). Each AE's latent bias is set so that about 2.5% of latents are active on
this prompt, as in real AEs. Then, per prompt length, the UI's pair (a latent-mode node table,
its twin with one MLP latent ablated) is answered: the first request once (it also computes the
write norms of the latents it meets, once per process) and one more while a thread records the
peak resident memory, then ``--repeats`` timed ones. The floor is HF's GPT2LMHeadModel
forward+backward of the same batch with frozen weights plus one dense encode and decode per AE
per layer (issue 11's definition).

Needs ~14 GB of memory: run it alone, under the shared lock:

    flock /tmp/actq-bigmem.lock python benchmarks/autoencoders.py [--tokens 20 60] [--repeats 3]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from engine import QUICK, PeakRss, build_model, prompt_of, rss_bytes, touch_weights  # noqa: E402

N_LATENTS = 32768
ACTIVE_FRACTION = 0.025


def release_free_heap() -> None:
    """Give the heap's free pages back (glibc's malloc_trim), so that the resident figure is
    what the model and AEs hold, not what building and calibrating them left free."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the figure may include that slack
        pass


def random_autoencoder(name: str, input_dst: str, n: int, n_layers: int, generator, m: int):
    import torch

    from worker.engine.autoencoders import Autoencoder, AutoencoderLayer

    layers = {}
    for layer in range(n_layers):
        w_enc = torch.randn(m, n, generator=generator) / n**0.5
        rows = w_enc.clone()  # untied storage as in released files, unit decoder columns
        rows /= rows.norm(dim=1, keepdim=True)
        w_dec = rows.T  # [n, m], laid out per latent as AutoencoderLayer keeps it
        layers[layer] = AutoencoderLayer(torch.zeros(n), w_enc, torch.zeros(m), w_dec, "relu")
    return Autoencoder(name, input_dst, layers, "tdb", f"random-{name}")


def calibrate(model, prompt: str) -> None:
    """Latent biases that leave ~2.5% of latents active on the prompt's own inputs."""
    import torch

    from worker.engine.families.gpt2 import forward
    from worker.engine.hooks import Hooks

    tokens = torch.tensor([model.tokenizer.encode(prompt)])
    keys = {(ae.input_point, layer) for ae in model.autoencoders.all() for layer in ae.layers}
    hooks = Hooks(save_forward=keys)
    with torch.no_grad():
        forward(model.weights, tokens, torch.zeros_like(tokens, dtype=torch.bool), hooks, False)
    for ae in model.autoencoders.all():
        for layer, part in ae.layers.items():
            pre = part.encode_pre_act(hooks.saved[(ae.input_point, layer)][0])
            part.latent_bias -= torch.quantile(pre.flatten()[::7], 1 - ACTIVE_FRACTION)


def ui_pair(prompt: str) -> dict:
    base = {
        "prompt": prompt,
        "targetTokens": [" mat"],
        "distractorTokens": [" dog"],
        "componentTypeForMlp": "autoencoder_latent",
        "componentTypeForAttention": "autoencoder_latent",
        "topAndBottomKForNodeTable": 10,
        "hideEarlyLayersWhenAblating": False,
    }
    ablation = {
        "nodeIndex": {
            "nodeType": "mlp_autoencoder_latent",
            "tensorIndices": [2, 100],
            "layerIndex": 3,
            "passType": "forward",
        },
        "value": 0.0,
    }
    return {"subRequests": [dict(base, nodeAblations=[ablation]), dict(base, nodeAblations=[])]}


def floor_seconds(model_dir: Path, aes, batch: int, n_tokens: int, repeats: int) -> float:
    """HF forward+backward, frozen weights, plus one dense encode+decode per AE per layer."""
    import torch
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(model_dir)
    for p in hf.parameters():
        p.requires_grad_(False)
    tokens = torch.randint(0, 50000, (batch, n_tokens))
    times, cpu = [], []
    for i in range(repeats + 1):
        start, start_cpu = time.perf_counter(), time.process_time()
        x = hf.transformer.wte(tokens).detach().requires_grad_(True)
        logits = hf(inputs_embeds=x).logits
        (logits[:, -1, 100] - logits[:, -1, 200]).sum().backward()
        with torch.no_grad():
            for ae in aes:
                for part in ae.layers.values():
                    inputs = torch.randn(batch * n_tokens, part.n_inputs)
                    part.decode(part.encode(inputs))
        if i:
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    del hf
    gc.collect()
    return statistics.median(times), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, nargs="+", default=[20, 60])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latents", type=int, default=N_LATENTS, help="a smaller smoke test")
    parser.add_argument(
        "--quick", action="store_true", help="a tiny model, 256 latents, 8 tokens: does it run"
    )
    args = parser.parse_args()
    if args.quick:
        args.tokens, args.repeats, args.latents = [8], 1, 256
    import torch

    from worker.engine import load_model, run
    from worker.engine.autoencoders import LoadedAutoencoders

    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "gpt2-small-random"
        build_model(model_dir, sizes=QUICK if args.quick else None)
        model = load_model(str(model_dir), "cpu")
        meta = model.meta
        touch_weights(model.weights)
        generator = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        model.autoencoders = LoadedAutoencoders(
            random_autoencoder(
                "mlp", "mlp_post_act", meta.d_mlp, meta.n_layers, generator, args.latents
            ),
            random_autoencoder(
                "attn", "resid_delta_attn", meta.d_model, meta.n_layers, generator, args.latents
            ),
        )
        calibrate(model, prompt_of(model.tokenizer, max(args.tokens)))
        gc.collect()
        release_free_heap()
        ae_bytes = sum(
            4 * (p.w_enc.numel() + p.w_dec.numel())
            for ae in model.autoencoders.all()
            for p in ae.layers.values()
        )
        resident = rss_bytes()
        print(
            f"gpt2-small-sized random model + AEs ({ae_bytes / 2**30:.2f} GiB of AE weights, built "
            f"in {time.perf_counter() - start:.0f} s); resident {resident / 2**30:.2f} GiB; "
            f"{os.cpu_count()} CPU threads"
        )
        print(
            f"{'tokens':>6} {'first':>7} {'min':>7} {'median':>7} {'floor':>7} {'ratio':>6} "
            f"{'cpu':>7} {'floor cpu':>9} {'cpu ratio':>9} {'peak GiB':>9} {'peak-resident GiB':>18}"
        )
        for n in args.tokens:
            request = ui_pair(prompt_of(model.tokenizer, n))
            times, cpu = [], []
            # the peak over the first request and one more; the timed ones run without the
            # polling thread (on 2 cores it takes a few % of the engine's time, and the floor
            # is timed without it)
            with PeakRss() as rss:
                start = time.perf_counter()
                run("batched_tdb", request, model)
                first = time.perf_counter() - start
                run("batched_tdb", request, model)
            for _ in range(args.repeats):
                start, start_cpu = time.perf_counter(), time.process_time()
                run("batched_tdb", request, model)
                times.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)
            floor, floor_cpu = floor_seconds(
                model_dir, model.autoencoders.all(), 2, n, args.repeats
            )
            median, median_cpu = statistics.median(times), statistics.median(cpu)
            print(
                f"{n:6d} {first:7.2f} {min(times):7.2f} {median:7.2f} {floor:7.2f} "
                f"{median / floor:6.2f} {median_cpu:7.2f} {floor_cpu:9.2f} "
                f"{median_cpu / floor_cpu:9.2f} {rss.peak / 2**30:9.2f} "
                f"{(rss.peak - resident) / 2**30:18.2f}",
                flush=True,
            )
        print(
            "seconds; first = the first request of the process (it computes the write norms of the "
            "active latents once); ratio = median / floor; cpu = the process's CPU seconds (less "
            "sensitive than wall time to other processes on a shared machine); the pair = 2 "
            "sub-requests of n tokens"
        )


if __name__ == "__main__":
    main()
