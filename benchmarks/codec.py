"""Where the streaming codec decode's GPU time goes, and what fusing its elementwise work buys (issue 17).

The 12 Hz codec's decoder (the package's class-default sizes: 8-layer sliding-window transformer, then a 1536-wide
upsampler of SnakeBeta activations and dilated causal convolutions) decodes every stream's window of new frames plus
25 frames of left context. At 16 streams a window is 16 x 49 frames, beside the frame steps on the same GPU. This
script builds the decoder at that size (the serve benchmark's `CODEC_DECODER`) with random weights scaled so that
activations stay O(1) (the class's own init leaves the codebooks at zero: silence), profiles one window's kernels by
kind, and times the variant as the engine runs it (a CUDA graph of the padded shape), with the bf16 output's error
against an fp32 copy of the same decoder:

- `eager`: the package's modules (what the engine graphed before `EngineConfig.codec_fused`);
- `fused`: `voicepipe.serve.engine.snake.fuse_codec` (SnakeBeta + causal padding + the convolutions' biases fused).

One variant per process (`--variant`), so that `--cudnn-benchmark` (cuDNN timing its convolution algorithms per
shape; its choices are cached per process) is measured from a clean cache:

    for v in eager fused; do for b in 0 1; do
        python3 benchmarks/codec.py --tiny-dir .dev-gpu/tiny-alice --variant $v --cudnn-benchmark $b --out $OUT/codec
    done; done
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = ((1, 4), (1, 27), (16, 27), (16, 49), (64, 49))  # (windows, frames): first chunks, cadence windows


def _graph(dec: torch.nn.Module, x: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    dec(x)  # warm-up (compiles, cuDNN benchmark) outside the capture
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=s):
        out = dec(x)
    torch.cuda.current_stream().wait_stream(s)
    return g, out


def _time_ms(fn, n: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


def _kinds(dec: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    """GPU time (ms) of one eager decode by kernel kind."""
    from torch.profiler import ProfilerActivity, profile

    dec(x)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        dec(x)
        torch.cuda.synchronize()
    by: collections.Counter = collections.Counter()
    names: collections.Counter = collections.Counter()
    n = 0
    for e in p.events():
        if e.device_type.name != "CUDA":
            continue
        n += 1
        k = e.name.lower()
        kind = ("conv" if any(s in k for s in ("conv", "cudnn", "implicit", "xmma", "wgrad", "dgrad", "fprop"))
                else "matmul" if any(s in k for s in ("gemm", "gemv", "sm90", "cutlass")) else
                "attention" if any(s in k for s in ("flash", "fmha", "attention", "sdpa")) else
                "copy/pad" if any(s in k for s in ("copy", "pad", "cat", "fill")) else
                "triton (fused)" if k.startswith("triton") else
                "elementwise" if any(s in k for s in ("elementwise", "vectorized", "unrolled", "reduce")) else "other")
        by[kind] += e.device_time / 1000
        names[e.name[:70]] += e.device_time / 1000
    top = [[k, round(v, 3)] for k, v in names.most_common(12)]
    print("  top kernels (ms):", top, flush=True)
    return {"kernels": n, **{k: round(v, 3) for k, v in by.most_common()}, "top": top}


def build_decoder(tiny_dir: Path, dtype: torch.dtype, device: str = "cuda") -> torch.nn.Module:
    """The codec decoder at the serve benchmark's size, random weights (seed 0) scaled to keep activations O(1)."""
    import serve as sb

    from voicepipe.models import apply_compat

    sb._stub_unused_audio_deps()
    apply_compat()
    from qwen_tts.core import Qwen3TTSTokenizerV2Config, Qwen3TTSTokenizerV2Model

    cfg = json.loads((tiny_dir / "speech_tokenizer" / "config.json").read_text())
    dc = {k: v for k, v in Qwen3TTSTokenizerV2Config().decoder_config.to_dict().items() if not k.startswith("_")}
    cfg["decoder_config"] = {**dc, **sb.CODEC_DECODER}
    torch.manual_seed(0)
    with torch.device(device):
        codec = Qwen3TTSTokenizerV2Model(Qwen3TTSTokenizerV2Config(**{k: v for k, v in cfg.items()
                                                                       if not k.startswith("_")})).eval()
    dec = codec.decoder
    with torch.no_grad():
        for name, p in dec.named_parameters():
            if "cluster_usage" in name:
                p.fill_(1.0)
            elif p.dim() >= 2:  # convolutions, linears (gain 0.5: the residual stacks stay tame), codebooks
                p.normal_(0.0, (0.5 if "codebook" not in name else 1.0) * (p[0].numel()) ** -0.5)
            elif name.endswith(("alpha", "beta")):  # SnakeBeta's log-scales
                p.normal_(0.0, 0.3)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.02)
        # the last convolution scaled so the waveform's RMS is ~0.1 (the decoder clamps to [-1, 1])
        seen = {}
        hook = dec.decoder[-1].register_forward_hook(lambda m, i, o: seen.setdefault("wav", o))
        dec(torch.randint(0, 2048, (1, 16, 8), generator=torch.Generator().manual_seed(2)).to(device))
        hook.remove()
        last = dec.decoder[-1].conv
        k = 0.1 / float(seen["wav"].float().pow(2).mean().sqrt())
        last.weight.mul_(k)
        last.bias.mul_(k)
    return dec.to(dtype)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny-dir", type=Path, required=True)
    ap.add_argument("--variant", choices=("eager", "fused"), default="fused")
    ap.add_argument("--cudnn-benchmark", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("codec-out"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from voicepipe.serve.engine.snake import fuse_codec

    torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)
    ref32 = build_decoder(args.tiny_dir, torch.float32)
    dec = copy.deepcopy(ref32).to(torch.bfloat16)
    if args.variant == "fused":
        fuse_codec(dec)
    name = f"{args.variant}{'-cudnnbench' if args.cudnn_benchmark else ''}"
    print(f"{name}: decoder {sum(p.numel() for p in dec.parameters()) / 1e6:.1f} M params", flush=True)
    results: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "variant": name, "rows": []}
    torch.manual_seed(1)
    inputs = {s: torch.randint(0, 2048, (s[0], 16, s[1]), device="cuda") for s in SHAPES}
    with torch.inference_mode():
        for s, x in inputs.items():
            ref = ref32(x).float()
            t0 = time.perf_counter()
            g, out = _graph(dec, x)
            first_s = time.perf_counter() - t0
            ms = _time_ms(g.replay)
            err = float((out.float() - ref).norm() / ref.norm())
            row = {"variant": name, "windows": s[0], "frames": s[1], "graph_ms": round(ms, 3),
                   "rel_err_vs_fp32": round(err, 5), "out_rms": round(float(ref.pow(2).mean().sqrt()), 4),
                   "warmup_and_capture_s": round(first_s, 2)}
            results["rows"].append(row)
            print(row, flush=True)
            del g, out
        results["profile_16x49"] = _kinds(dec, inputs[(16, 49)])
        print(f"{name}: profile 16 x 49:", results["profile_16x49"], flush=True)
    (args.out / f"codec-{name}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
