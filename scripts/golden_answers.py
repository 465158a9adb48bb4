"""Answer a folder of golden cases with actq's engine, in the layout the golden `compare.py` reads.

    python scripts/golden_answers.py OUT_DIR [CASES_DIR] [--model DIR] [--device cpu|cuda]
        [--autoencoders DIR]   # the AE folders the cases' "server" key names (default: TDB format)
    python ../shared/golden/compare.py OUT_DIR [CASES_DIR]

Each case file `{"endpoint", "request", ...}` gets an answer file of the same name holding
`{"response": ...}`, or `{"error": {...}}` for a request actq refuses (with its HTTP status).
The model defaults to the oracle model beside the cases (`CASES_DIR/../oracle-gpt2-tiny`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.errors import ActqError  # noqa: E402
from worker.engine import load_model, run  # noqa: E402

DEFAULT_CASES = Path(__file__).resolve().parents[2] / "shared" / "golden" / "cases"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("cases_dir", type=Path, nargs="?", default=DEFAULT_CASES)
    parser.add_argument(
        "--model", help="model directory or name (default: the oracle model beside the cases)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--autoencoders",
        type=Path,
        help="folder of AE folders named as the cases' server key names them "
        "(default: CASES_DIR/../autoencoders; autoencoders-saelens for SAELens's format)",
    )
    args = parser.parse_args()
    model_dir = args.model or str(args.cases_dir.parent / "oracle-gpt2-tiny")
    ae_root = args.autoencoders or args.cases_dir.parent / "autoencoders"
    models: dict[tuple, object] = {}

    def model_for(server: dict) -> object:
        names = (server.get("mlpAutoencoder"), server.get("attentionAutoencoder"))
        if names not in models:
            mlp, attention = (None if n is None else f"{n}={ae_root / n}" for n in names)
            models[names] = load_model(
                model_dir, args.device, mlp_autoencoder=mlp, attention_autoencoder=attention
            )
        return models[names]

    args.out_dir.mkdir(parents=True, exist_ok=True)
    for case_file in sorted(args.cases_dir.glob("*.json")):
        case = json.loads(case_file.read_text(encoding="utf-8"))
        model = model_for(case.get("server") or {})
        start = time.perf_counter()
        try:
            answer = {"response": run(case["endpoint"], case["request"], model)}
        except ActqError as error:
            answer = {"error": dict(error.to_dict()["error"], status=error.status)}
        elapsed = time.perf_counter() - start
        (args.out_dir / case_file.name).write_text(
            json.dumps(answer, ensure_ascii=False), encoding="utf-8"
        )
        status = f"error {answer['error']['status']}" if "error" in answer else "ok"
        print(f"{case_file.name:60} {elapsed * 1000:8.1f} ms  {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
