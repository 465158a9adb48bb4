"""Records of every neuron and head of a gpt2-small-sized model, against the forward passes alone.

Builds the random gpt2-small-sized model of ``benchmarks/engine.py`` (12 layers, 3072 neurons and
12 heads a layer: 36,864 neurons and 144 heads), makes N documents of T random tokens, and in
separate subprocesses (so that peak-memory readings do not mix) times:
  * ``forward``: the engine's forward passes over the documents in batches, nothing kept;
  * ``records``: the same passes with the ``RecordBuilder`` keeping the top sequences of every
    node (what a records job's worker does per batch), then the records built and encoded for
    the store (``results`` + ``encode_record``, the rows a job writes), timed apart;
and prints each one's seconds and peak resident memory next to the loaded model's.

    python benchmarks/records.py [--documents 1000] [--tokens 64] [--top-k 20] [--random-k 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine import QUICK, PeakRss, build_model, rss_bytes  # noqa: E402

BATCH = 16


def documents(n: int, tokens: int, vocab: int) -> list[list[int]]:
    import torch

    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (n, tokens), generator=generator).tolist()


def measure(model_dir: str, mode: str, n: int, tokens: int, top_k: int, random_k: int) -> dict:
    import torch

    from models.store.node_records import Sequence, encode_record
    from worker.engine import load_model
    from worker.engine.families.gpt2 import forward
    from worker.engine.hooks import Hooks
    from worker.engine.records import RecordBuilder, random_sequences

    model = load_model(model_dir, device="cpu")
    loaded = rss_bytes()
    docs = documents(n, tokens, model.meta.vocab_size)
    out = {"mode": mode, "loaded_rss": loaded}
    with PeakRss() as peak:
        start = time.perf_counter()
        if mode == "forward":
            for i in range(0, n, BATCH):
                batch = torch.tensor(docs[i : i + BATCH])
                with torch.no_grad():
                    forward(
                        model.weights,
                        batch,
                        torch.zeros_like(batch, dtype=torch.bool),
                        Hooks(),
                        needs_grad=False,
                    )
            out["pass_seconds"] = time.perf_counter() - start
        else:
            builder = RecordBuilder(model, ["mlp_neuron", "attention_head"], top_k, tokens)
            for i in range(0, n, BATCH):
                builder.add_batch(docs[i : i + BATCH], list(range(i, min(i + BATCH, n))))
            out["pass_seconds"] = time.perf_counter() - start
            start = time.perf_counter()
            sample = {i: docs[i] for i in random_sequences(n, random_k)}
            size = count = 0
            for node in builder.results({i: tokens for i in range(n)}, sample):
                data = encode_record(
                    [Sequence(docs[i], a) for i, a in node.top],
                    [Sequence(docs[i], a) for i, a in node.random],
                )
                size, count = size + len(data), count + 1
            out.update(build_seconds=time.perf_counter() - start, records=count, bytes=size)
    out["peak_rss"] = peak.peak
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--documents", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--random-k", type=int, default=10)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # MODEL_DIR MODE (subprocess)
    parser.add_argument("--quick", action="store_true", help="a tiny model, 4 documents")
    args = parser.parse_args()
    if args.quick:
        args.documents, args.tokens = 4, 16
    if args.one:
        result = measure(
            args.one[0], args.one[1], args.documents, args.tokens, args.top_k, args.random_k
        )
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "gpt2-small-random"
        build_model(model_dir, sizes=QUICK if args.quick else None)
        print(
            f"{'tiny (--quick)' if args.quick else 'gpt2-small-sized'} random model, {args.documents} documents of {args.tokens} "
            f"tokens, top {args.top_k} + random {args.random_k} per node, "
            f"{os.cpu_count()} CPU threads"
        )
        results = {}
        for mode in ("forward", "records"):
            command = [
                sys.executable,
                __file__,
                "--documents",
                str(args.documents),
                "--tokens",
                str(args.tokens),
                "--top-k",
                str(args.top_k),
                "--random-k",
                str(args.random_k),
                "--one",
                str(model_dir),
                mode,
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    mb = 1024 * 1024
    forward, records = results["forward"], results["records"]
    print(
        f"forward passes alone: {forward['pass_seconds']:.1f} s, "
        f"peak {forward['peak_rss'] / mb:.0f} MB (model loaded: {forward['loaded_rss'] / mb:.0f} MB)"
    )
    print(
        f"records, passes + top-k: {records['pass_seconds']:.1f} s "
        f"({records['pass_seconds'] / forward['pass_seconds']:.2f}x the forward passes)"
    )
    print(
        f"records, build + encode {records['records']} records: {records['build_seconds']:.1f} s, "
        f"{records['bytes'] / mb:.0f} MB compressed"
    )
    print(
        f"records, total: {records['pass_seconds'] + records['build_seconds']:.1f} s "
        f"({(records['pass_seconds'] + records['build_seconds']) / forward['pass_seconds']:.2f}x); "
        f"peak {records['peak_rss'] / mb:.0f} MB (model loaded: {records['loaded_rss'] / mb:.0f} MB)"
    )


if __name__ == "__main__":
    main()
