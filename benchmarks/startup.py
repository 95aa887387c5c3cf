"""The serving engine's start-up on a GPU: what a restart of `voicepipe serve` costs before the first request.

    python benchmarks/startup.py --tiny-dir .dev-gpu/tiny-alice [--batches 1,16]

The full-size 1.7B architecture with random bf16 weights (`serve.build_model`). Times, each after a CUDA sync:
the whole engine start-up as the server's does it (construction and `capture()`: every CUDA graph, the codec's and
the prefill's too) with the predictor's projected code tables (`EngineConfig.proj_table`) and without them, one
engine at a time, in alternating order; then the tables alone again (`kernels.projected_tables`: 15 tables x 2,048
one-row calls), their kernels warm. Not a test: numbers go to RESULTS.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve  # noqa: E402 - the serve benchmark's model builder and engine factory


def _sync() -> None:
    torch.cuda.synchronize()


def tables_once(eng) -> float:
    """Seconds to build the projected tables again from the engine's own predictor weights."""
    from voicepipe.serve.engine import kernels as K

    cp, proj = eng.cp, eng.cp.small_to_mtp_projection  # (TTSEngine is a FrameStep)
    if not isinstance(proj, torch.nn.Linear):
        raise RuntimeError("the predictor has no input projection (nothing to tabulate)")
    _sync()
    t0 = time.perf_counter()
    K.projected_tables([m.weight for m in cp.model.codec_embedding], proj.weight, proj.bias, eng.small_gemv)
    _sync()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny-dir", type=Path, required=True)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--first", choices=["on", "off"], default="on", help="which engine the first round builds first")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    tts = serve.build_model("cuda", torch.bfloat16, False, Path("/tmp"), a.tiny_dir)
    rows = []
    for b in (int(x) for x in a.batches.split(",")):
        for r in range(a.rounds):
            order = (True, False) if (r % 2 == 0) == (a.first == "on") else (False, True)
            for proj in order:
                gc.collect()
                torch.cuda.empty_cache()
                _sync()
                t0 = time.perf_counter()
                eng = serve.make_engine(tts, b, proj_table=proj)
                cap = eng.capture()  # what the server's start-up does (`serve.app`'s lifespan)
                _sync()
                dt = time.perf_counter() - t0
                row = {"max_batch": b, "proj_table": proj, "round": r, "engine_s": round(dt, 2),
                       "capture_s": round(cap, 2)}
                if proj:  # again, its kernels warm: the tables' own share of the start-up
                    try:
                        row["tables_s"] = round(tables_once(eng), 3)
                    except (AttributeError, RuntimeError) as e:
                        row["tables_s"] = f"n/a: {e}"
                print(json.dumps(row), flush=True)
                rows.append(row)
                del eng
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "startup.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
