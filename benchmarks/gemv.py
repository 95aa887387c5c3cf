"""Small-M matmul microbenchmark: cuBLAS (F.linear) vs voicepipe's Triton kernels on the frame step's real shapes.

The Qwen3-TTS-12Hz-1.7B talker (hidden 2048, MLP 6144, 16/8 heads of 128) and code predictor (hidden 1024, MLP 3072,
16/8 heads of 128, 2048-code heads), bf16 weights, M = 1, 2, 16, 64 rows. Each (shape, M, kernel) is timed as a
CUDA graph of one call per weight copy, over enough copies (>= 512 MB) that the weights come from HBM as they do in
a frame step (whose ~5 GB of weights do not fit the 50 MB L2); time per call = graph replay / copies (median of 20
replays), GB/s = (weights + x + y bytes) / time. Every Triton config is checked against an fp64 reference beside
cuBLAS's own error.

    python benchmarks/gemv.py --out /tmp/gemv        # GPU
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from voicepipe.serve.engine import gemv  # noqa: E402

# name, N (out), K (in), bias, uses per frame step (one talker pass over 28 layers, 15 predictor passes over 5)
SHAPES = [
    ("talker qkv", 4096, 2048, False, 28),
    ("talker o", 2048, 2048, False, 28),
    ("talker gate/up", 12288, 2048, False, 28),
    ("talker down", 2048, 6144, False, 28),
    ("talker codec head", 3072, 2048, False, 1),
    ("predictor in-proj", 1024, 2048, True, 15),
    ("predictor qkv", 4096, 1024, False, 75),
    ("predictor o", 1024, 2048, False, 75),
    ("predictor gate/up", 6144, 1024, False, 75),
    ("predictor down", 1024, 3072, False, 75),
    ("predictor head", 2048, 1024, False, 15),
]

GEMV_CONFIGS = [(bn, bk, w, s) for bn, bk, w, s in [
    (4, 512, 4, 1), (8, 256, 4, 1), (8, 512, 4, 1), (8, 512, 4, 2), (16, 256, 4, 1), (16, 512, 8, 1), (32, 256, 8, 1),
    (8, 1024, 8, 1)]]
SKINNY_CONFIGS = {16: [(16, 16, 128, 4, 4), (16, 32, 128, 4, 4), (16, 64, 128, 4, 3), (16, 32, 256, 4, 3),
                       (16, 16, 256, 4, 3), (16, 64, 64, 4, 4)],
                  64: [(64, 32, 128, 4, 4), (64, 64, 128, 4, 3), (64, 64, 64, 4, 4), (32, 32, 128, 4, 4),
                       (64, 16, 128, 4, 4), (64, 32, 256, 4, 3)]}


def configs_for(M: int) -> list[tuple]:
    bm = 1 << max(0, (M - 1).bit_length())
    out = []
    if M <= 8:
        out += [("gemv", bm, bn, bk, w, s) for bn, bk, w, s in GEMV_CONFIGS if bm * bn * bk <= 8192 * (w // 4) * 2]
        out += [("skinny", 16, bn, bk, w, s) for _, bn, bk, w, s in SKINNY_CONFIGS[16][:3]]
    else:
        out += [("skinny", *c) for c in SKINNY_CONFIGS[16 if M <= 16 else 64]]
    return out


def time_graph(fn, copies: list, x: torch.Tensor, reps: int = 20) -> float:
    """Median µs per call of a CUDA graph that calls fn(x, w, b) once per weight copy."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for w, b in copies[:2]:
            fn(x, w, b)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for w, b in copies:
            fn(x, w, b)
    for _ in range(3):
        g.replay()
    times = []
    for _ in range(reps):
        a, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        e.record()
        e.synchronize()
        times.append(a.elapsed_time(e) * 1000 / len(copies))
    del g
    return statistics.median(times)


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref).norm() / ref.norm())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", default="1,2,16,64")
    ap.add_argument("--min-mb", type=float, default=512.0, help="weight copies per graph: at least this many MB")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    Ms = [int(m) for m in a.m.split(",")]
    rows = []
    t_start = time.perf_counter()
    for name, N, K, has_bias, uses in SHAPES:
        wbytes = N * K * 2
        n_copies = max(8, math.ceil(a.min_mb * 2**20 / wbytes))
        copies = [(torch.randn(N, K, device=dev, dtype=torch.bfloat16) * K**-0.5,
                   torch.randn(N, device=dev, dtype=torch.bfloat16) * 0.1 if has_bias else None)
                  for _ in range(n_copies)]
        for M in Ms:
            x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
            w0, b0 = copies[0]
            ref = x.double() @ w0.double().T + (b0.double() if b0 is not None else 0)
            nbytes = wbytes + (M * K + M * N) * 2 + (N * 2 if has_bias else 0)
            row = dict(shape=name, N=N, K=K, M=M, uses=uses, copies=n_copies, bytes=nbytes,
                       floor_us=nbytes / 4.3e12 * 1e6)
            row["cublas_err"] = rel_err(F.linear(x, w0, b0), ref)
            row["cublas_us"] = time_graph(lambda x, w, b: F.linear(x, w, b), copies, x)
            variants = []
            for cfg in [None, *configs_for(M)]:
                label = "default" if cfg is None else "/".join(map(str, cfg))
                try:
                    y = gemv.launch(x, w0, b0, cfg)
                    torch.cuda.synchronize()
                    err = rel_err(y, ref)
                    us = time_graph(lambda x, w, b, c=cfg: gemv.launch(x, w, b, c), copies, x)
                except Exception as e:  # noqa: BLE001 - a config that does not compile (resources)
                    print(f"  {name} M={M} {label}: {type(e).__name__}: {str(e)[:120]}", flush=True)
                    continue
                variants.append(dict(config=label, us=us, err=err))
            ok = [v for v in variants if v["err"] <= max(2 * row["cublas_err"], 5e-3)]
            best = min(ok, key=lambda v: v["us"]) if ok else None
            row["variants"] = variants
            row["default_us"] = next((v["us"] for v in variants if v["config"] == "default"), float("nan"))
            row["best"] = best
            rows.append(row)
            gbs = lambda us, nb=nbytes: nb / us / 1e3  # noqa: E731
            print(f"{name:18s} M={M:3d}: cuBLAS {row['cublas_us']:6.1f} us ({gbs(row['cublas_us']):5.0f} GB/s), "
                  f"default {row['default_us']:6.1f} us ({gbs(row['default_us']):5.0f} GB/s), best "
                  f"{best['us'] if best else float('nan'):6.1f} us [{best['config'] if best else '-'}] "
                  f"(floor {row['floor_us']:.1f}); err cuBLAS {row['cublas_err']:.1e} / default "
                  f"{next((v['err'] for v in variants if v['config'] == 'default'), float('nan')):.1e}",
                  flush=True)
        del copies
        torch.cuda.empty_cache()
    print(f"[{time.perf_counter() - t_start:.0f} s]")
    # per frame step: each shape's time x its uses (the predictor's first pass has 2 rows per stream: ignored)
    lines = ["| M | cuBLAS ms/step | Triton default ms/step | Triton best-per-shape ms/step | floor ms/step |",
             "|---|---|---|---|---|"]
    for M in Ms:
        rs = [r for r in rows if r["M"] == M]
        cb = sum(r["cublas_us"] * r["uses"] for r in rs) / 1e3
        df = sum(r["default_us"] * r["uses"] for r in rs) / 1e3
        bs = sum((r["best"]["us"] if r["best"] else r["cublas_us"]) * r["uses"] for r in rs) / 1e3
        fl = sum(r["floor_us"] * r["uses"] for r in rs) / 1e3
        lines.append(f"| {M} | {cb:.2f} | {df:.2f} | {bs:.2f} | {fl:.2f} |")
    lines += ["", "| shape | M | cuBLAS us (GB/s) | Triton default us (GB/s) | best us (GB/s) [config] |",
              "|---|---|---|---|---|"]
    for r in rows:
        g = lambda us, r=r: f"{us:.1f} ({r['bytes'] / us / 1e3:.0f})"  # noqa: E731
        b = r["best"]
        lines.append(f"| {r['shape']} | {r['M']} | {g(r['cublas_us'])} | {g(r['default_us'])} | "
                     f"{g(b['us']) + ' [' + b['config'] + ']' if b else '-'} |")
    print("\n".join(lines))
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        info = dict(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), gpu=torch.cuda.get_device_name(),
                    torch=torch.__version__)
        (a.out / "gemv.json").write_text(json.dumps(dict(info=info, rows=rows), indent=1))
        (a.out / "gemv.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
