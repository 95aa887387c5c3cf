"""What a prefill of a (batch, prompt length) shape not seen before costs, and why: first vs second call.

The 1.7B-size random-bf16 model of `benchmarks/serve.py`, its eager engine (no compile, no graphs: the prefill is
eager in every engine). For every (n prompts, length T) the host time of the first and the second `_prefill`
(synchronised), with cuDNN's attention allowed (PyTorch's default) and excluded (`EngineConfig.prefill_cudnn`,
False by default); each variant gets its own lengths, so every shape it meets is new to the process.

    python benchmarks/prefill_first.py --tiny-dir DIR --out /tmp/prefill    # GPU
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny-dir", type=Path, required=True)
    ap.add_argument("--ns", default="1,2,3,5,8,13,16")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    from serve import TEXT, build_model, make_engine

    from voicepipe.serve.engine import Prompt

    with tempfile.TemporaryDirectory() as tmp:
        tts = build_model("cuda", torch.bfloat16, False, Path(tmp), a.tiny_dir)
    eng = make_engine(tts, 16, cuda_graphs=False, compile=False, codec_graphs=False, decode_thread=False)
    real = eng.prepare(TEXT, speaker="alice", language="english")
    T0 = real.embeds.shape[0] - 1
    H = real.embeds.shape[1]
    ns = [int(x) for x in a.ns.split(",")]

    def prompts(T: int, n: int) -> list:
        return [Prompt(embeds=torch.randn(T + 1, H, device="cuda", dtype=torch.bfloat16) * 0.02,
                       trailing=real.trailing) for _ in range(n)]

    def timed(n: int, ps: list) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.inference_mode():
            eng._prefill(list(range(n)), ps)
        torch.cuda.synchronize()
        return 1000 * (time.perf_counter() - t0)

    @contextlib.contextmanager
    def cudnn(allowed: bool):
        eng.cfg.prefill_cudnn = allowed
        yield

    variants = [("cuDNN allowed (PyTorch's default, before)", lambda: cudnn(True), 0),
                ("cuDNN excluded (EngineConfig default)", lambda: cudnn(False), 1)]
    # one unmeasured prefill: library handles, the first kernels' modules
    timed(1, prompts(T0 + 40, 1))
    rows = []
    for label, ctx, off in variants:
        for T in (T0 + off, T0 + 2 + off, T0 + 4 + off, T0 + 8 + off):
            for n in ns:
                ps = prompts(T, n)
                with ctx():
                    first, second = timed(n, ps), timed(n, ps)
                rows.append(dict(variant=label, T=T, n=n, first_ms=round(first, 1), second_ms=round(second, 1)))
                print(rows[-1], flush=True)
    # which attention kernel each variant runs
    from torch.profiler import ProfilerActivity, profile

    kernels = {}
    for label, ctx, _ in variants:
        ps = prompts(T0, 2)
        with ctx(), profile(activities=[ProfilerActivity.CUDA]) as p:
            timed(2, ps)
        names = sorted({e.name[:90] for e in p.events() if e.device_type.name == "CUDA"
                        and any(s in e.name.lower() for s in ("attn", "attention", "fmha", "cudnn", "flash"))})
        kernels[label] = names
        print(label, "attention kernels:", names, flush=True)
    lines = ["| variant | T | n | first ms | second ms |", "|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['T']} | {r['n']} | {r['first_ms']} | {r['second_ms']} |" for r in rows]
    summ = []
    for label, _, _ in variants:
        rs = [r for r in rows if r["variant"] == label]
        f = sorted(r["first_ms"] for r in rs)
        s = sorted(r["second_ms"] for r in rs)
        summ.append(f"{label}: first call median {f[len(f) // 2]} ms (max {f[-1]}), second call median "
                    f"{s[len(s) // 2]} ms (max {s[-1]}), {len(rs)} shapes")
    print("\n".join(lines + [""] + summ))
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        info = dict(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), gpu=torch.cuda.get_device_name(),
                    torch=torch.__version__, prompt_tokens=T0 + 1)
        (a.out / "prefill_first.json").write_text(json.dumps(dict(info=info, rows=rows, kernels=kernels), indent=1))


if __name__ == "__main__":
    main()
