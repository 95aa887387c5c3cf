"""The code predictor's fused layer kernels (voicepipe/serve/engine/fused.py) on a GPU: errors and time.

At the 1.7B model's predictor shapes (hidden 1024, 16 / 8 heads of 128, MLP 3072, 16-slot cache), random bf16
weights, 1 and 2 rows:

0. `fused.sample_topk` (one-kernel top-k sampling) against the unfused sampler with the same draws, and time;
1. each fused op against the unfused math it replaces (relative error; cache writes compared too), and against
   fp32 math, so the two bf16 paths' distances from exact can be compared;
2. one code-predictor step (`kernels.predictor_next`, 5 layers + head + sampling) both ways, each compiled as the
   engine compiles it and replayed as a CUDA graph of 14 steps (one frame's predictor_next calls): microseconds per
   step, and the kernel count of one step from the profiler.

    python benchmarks/fused.py --out $OUT/fused
    python benchmarks/fused.py --rows 2,16 --levers --warps --split-sweep --variants \
        '[{"sample": true, "attn_warps": 4}, {"sample": true, "head": true, "split": 4, "attn_warps": 2}]'

`--persistent`: the one-kernel predictor step (`engine/persistent.py`) against the fused ops' step, its own
phase-by-phase launch and 200 repeats of itself (`persistent_check`); a variant `{"persist": {...}}` times it, with
`persistent.GRID` / `NUM_WARPS` / `TILES` / `SYNC` / `WORK` overrides (`SYNC` / `WORK`: timing-only switches that
leave out the barriers or phases). `--levers`: `sample_embed` against `sample_topk`; `--warps`: attention and
sampling at 1-8 warps; `--sampler`: the sampler's threshold-search forms (`fused.SAMPLE_KEY16`);
`--split-sweep`: the matmul + residual op split-K at 16 rows; `--variants`: step times of the
fused step with the given levers (`"rms_split"`: `fused.RMS_SPLIT`; `"config"`: `fused.CONFIG` entries; `"consts"`:
other `fused` constants, e.g. `{"GEMV_PRELOAD": true}`). The error check (1.) also compares the norm ops split K
2 and 4 ways with the unsplit kernel (`rms_split_errors`) and each preload switch with the op without it
(`preload_checks`: bitwise equal).
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from voicepipe.serve.engine import fused, persistent
from voicepipe.serve.engine import kernels as K

H, NH, KVH, HD, FF, L, S, V, LAYERS = 1024, 16, 8, 128, 3072, 16, 64, 2048, 5


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def layers(dev: torch.device) -> list[K._FusedLayer]:
    def w(*s, scale=0.02):
        return (torch.randn(*s, device=dev) * scale).to(torch.bfloat16)

    return [K._FusedLayer(ln1=w(H, scale=0.1) + 1, ln2=w(H, scale=0.1) + 1, qk_w=w(NH + KVH, HD, scale=0.1) + 1,
                          wqkv=w((NH + 2 * KVH) * HD, H), wo=w(H, NH * HD), wgu=w(2 * FF, H), wd=w(H, FF),
                          eps=1e-6, qk_eps=1e-6) for _ in range(LAYERS)]


def op_errors(dev: torch.device, ms: tuple[int, ...] = (1, 2)) -> list[dict]:
    lw = layers(dev)[0]
    rows = []
    rot = torch.randn(L, HD, device=dev)
    cos_t, sin_t = rot.cos().to(torch.bfloat16), K.signed_sin(rot.sin()).to(torch.bfloat16)
    for m in ms:
        x = torch.randn(m, H, device=dev).to(torch.bfloat16)
        x32 = x.float()

        def rms32(t, g):
            return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6) * g.float()

        y, r = fused.rms_linear(x, lw.ln1, lw.wqkv, 1e-6), F.linear(fused._ref_rms(x, lw.ln1, 1e-6), lw.wqkv)
        e = F.linear(rms32(x32, lw.ln1), lw.wqkv.float())
        rows.append(dict(op="rms_linear", rows=m, vs_unfused=rel(y, r), fused_vs_fp32=rel(y, e),
                         unfused_vs_fp32=rel(r, e)))
        rows += rms_split_errors("rms_linear", m, lambda x=x: fused.rms_linear(x, lw.ln1, lw.wqkv, 1e-6), r, e)
        y = fused.rms_glu(x, lw.ln2, lw.wgu, 1e-6)
        g, u = F.linear(fused._ref_rms(x, lw.ln2, 1e-6), lw.wgu).chunk(2, -1)
        r = F.silu(g) * u
        g32, u32 = F.linear(rms32(x32, lw.ln2), lw.wgu.float()).chunk(2, -1)
        e = F.silu(g32) * u32
        rows.append(dict(op="rms_glu", rows=m, vs_unfused=rel(y, r), fused_vs_fp32=rel(y, e),
                         unfused_vs_fp32=rel(r, e)))
        rows += rms_split_errors("rms_glu", m, lambda x=x: fused.rms_glu(x, lw.ln2, lw.wgu, 1e-6), r, e)
        a = torch.randn(m, FF, device=dev).to(torch.bfloat16)
        y, r = fused.linear_residual(a, lw.wd, x), x + F.linear(a, lw.wd)
        e = x32 + F.linear(a.float(), lw.wd.float())
        rows.append(dict(op="linear_residual", rows=m, vs_unfused=rel(y, r), fused_vs_fp32=rel(y, e),
                         unfused_vs_fp32=rel(r, e)))
        if m > fused.GEMV_ROWS:  # split-K (EngineConfig.fused_split_k)
            y = fused.linear_residual(a, lw.wd, x, 4)
            rows.append(dict(op="linear_residual split 4", rows=m, vs_unfused=rel(y, r), fused_vs_fp32=rel(y, e),
                             unfused_vs_fp32=rel(r, e)))
        for pos in (2, 9, 15):
            qkv = torch.randn(m, (NH + 2 * KVH) * HD, device=dev).to(torch.bfloat16)
            kc = torch.randn(S, KVH, L, HD, device=dev).to(torch.bfloat16)
            vc = torch.randn_like(kc)
            kc2, vc2 = kc.clone(), vc.clone()
            p = torch.tensor([pos], device=dev)
            cs = (cos_t[pos : pos + 1, None], sin_t[pos : pos + 1, None])
            y = fused.attn_decode(qkv, lw.qk_w, *cs, p, kc, vc, 1e-6, NH, KVH)
            r = fused._ref_attn(qkv, lw.qk_w, *cs, p, kc2, vc2, 1e-6, NH, KVH)
            same = bool(torch.equal(vc, vc2)) and rel(kc, kc2) < 0.01
            rows.append(dict(op="attn_decode", rows=m, pos=pos, vs_unfused=rel(y, r),
                             cache_k_vs_unfused=rel(kc, kc2), caches_match=same))
    return rows


def rms_split_errors(op: str, m: int, call, r: torch.Tensor, e: torch.Tensor, splits: tuple[int, ...] = (2, 4)
                     ) -> list[dict]:
    """The norm op split K ways (`fused.RMS_SPLIT`) at 1-2 rows against the unfused path `r` and fp32 `e`: the
    fraction of outputs that differ from the unsplit kernel (fp32 partials added in another order, then rounded to
    bf16) and whether two calls agree bitwise (the split's reduction is deterministic)."""
    if m > fused.GEMV_ROWS:
        return []
    old = fused.RMS_SPLIT
    rows = []
    try:
        fused.RMS_SPLIT = 1
        y1 = call()
        for s in splits:
            fused.RMS_SPLIT = s
            y, y2 = call(), call()
            rows.append(dict(op=f"{op} rms_split {s}", rows=m, vs_unfused=rel(y, r), fused_vs_fp32=rel(y, e),
                             unfused_vs_fp32=rel(r, e), vs_split1=rel(y, y1),
                             differ_from_split1=float((y != y1).float().mean()),
                             repeat_bitwise=bool(torch.equal(y, y2))))
    finally:
        fused.RMS_SPLIT = old
    return rows


def preload_checks(dev: torch.device, ms: tuple[int, ...]) -> list[dict]:
    """`fused.GEMV_PRELOAD` / `fused.RMS_PRELOAD` / `fused.ATTN_PRELOAD` (and `fused.SPLIT_ALIGN` at 16 rows) against
    the same ops without them, at the predictor's shapes (q/k/v, gate/up + SiLU, output and down projections +
    residual, attention with its cache write): the same sums in the same order, so the outputs (and caches) must be
    bitwise equal."""
    lw = layers(dev)[0]
    rows = []
    for m in ms:
        x, o, a = (torch.randn(m, k, device=dev).to(torch.bfloat16) for k in (H, NH * HD, FF))
        calls = {"rms_linear": lambda x=x: fused.rms_linear(x, lw.ln1, lw.wqkv, 1e-6),
                 "rms_glu": lambda x=x: fused.rms_glu(x, lw.ln2, lw.wgu, 1e-6),
                 "linear_residual/o": lambda x=x, o=o: fused.linear_residual(o, lw.wo, x),
                 "linear_residual/down": lambda x=x, a=a: fused.linear_residual(a, lw.wd, x)}
        pos, qkv = 9, torch.randn(m, (NH + 2 * KVH) * HD, device=dev).to(torch.bfloat16)
        kc, vc = (torch.randn(S, KVH, L, HD, device=dev).to(torch.bfloat16) for _ in range(2))
        rot = torch.randn(L, HD, device=dev)
        cs = (rot.cos().to(torch.bfloat16)[pos : pos + 1, None],
              K.signed_sin(rot.sin()).to(torch.bfloat16)[pos : pos + 1, None])

        def attn(qkv=qkv, kc=kc, vc=vc, cs=cs, pos=pos) -> torch.Tensor:
            k2, v2 = kc.clone(), vc.clone()
            o = fused.attn_decode(qkv, lw.qk_w, *cs, torch.tensor([pos], device=dev), k2, v2, 1e-6, NH, KVH)
            return torch.cat([o.flatten(), k2.flatten(), v2.flatten()])

        calls["attn_decode"] = attn
        for name, call in calls.items():
            flag = ("GEMV_PRELOAD" if name.startswith("linear") else "ATTN_PRELOAD" if name.startswith("attn")
                    else "RMS_PRELOAD")
            old = getattr(fused, flag)
            try:
                setattr(fused, flag, False)
                y0 = call()
                setattr(fused, flag, True)
                y1 = call()
            finally:
                setattr(fused, flag, old)
            rows.append(dict(op=f"{name} {flag}", rows=m, bitwise_equal=bool(torch.equal(y0, y1)),
                             vs_without=rel(y1, y0)))
    a, x = torch.randn(16, FF, device=dev).to(torch.bfloat16), torch.randn(16, H, device=dev).to(torch.bfloat16)
    old = fused.SPLIT_ALIGN
    try:  # the 3-16 row form's split-K (EngineConfig.fused_split_k 4) with its alignment hint
        fused.SPLIT_ALIGN = False
        y0 = fused.linear_residual(a, lw.wd, x, 4)
        fused.SPLIT_ALIGN = True
        y1 = fused.linear_residual(a, lw.wd, x, 4)
    finally:
        fused.SPLIT_ALIGN = old
    rows.append(dict(op="linear_residual/down split 4 SPLIT_ALIGN", rows=16, bitwise_equal=bool(torch.equal(y0, y1)),
                     vs_without=rel(y1, y0)))
    return rows


def head_check(dev: torch.device, ms: tuple[int, ...]) -> list[dict]:
    """`fused.sample_embed` (`EngineConfig.fused_head`) against `sample_topk` + `F.embedding`, bf16 logits against
    their fp32 copy: the same codes and rows."""
    out = []
    for m in ms:
        emb_w = (torch.randn(V, 2048, device=dev) * 0.02).to(torch.bfloat16)
        logits = (torch.randn(m, V, device=dev) * 3).to(torch.bfloat16)
        temp = torch.full((m, 1), 0.9, device=dev)
        greedy = torch.arange(m, device=dev) % 3 == 0
        same = 0
        for _ in range(20):
            expo = torch.empty(m, 50, device=dev).exponential_()
            c, e = fused.sample_embed(logits, temp, greedy, expo, emb_w)
            c0 = fused.sample_topk(logits.float(), temp, greedy, expo)
            same += int((c == c0).sum()) if torch.equal(e, F.embedding(c0, emb_w)) else 0
        out.append(dict(check="sample_embed", rows=m, codes_and_rows_equal=f"{same}/{20 * m}"))
        print(out[-1], flush=True)
    return out


def warps_sweep(dev: torch.device, ms: tuple[int, ...]) -> list[dict]:
    """`attn_decode` and `sample_topk` at each of 1, 2, 4, 8 warps per program (`fused.ATTN_WARPS`,
    `fused.SAMPLE_WARPS`): microseconds per call as CUDA graphs, and the outputs against 4 warps' (equal)."""
    out = []
    lw = layers(dev)[0]
    rot = torch.randn(L, HD, device=dev)
    cos_t, sin_t = rot.cos().to(torch.bfloat16), K.signed_sin(rot.sin()).to(torch.bfloat16)
    for m in ms:
        qkv = torch.randn(m, (NH + 2 * KVH) * HD, device=dev).to(torch.bfloat16)
        kc = torch.randn(S, KVH, L, HD, device=dev).to(torch.bfloat16)
        vc = torch.randn_like(kc)
        p, cs = torch.tensor([9], device=dev), (cos_t[9:10, None], sin_t[9:10, None])
        logits = torch.randn(m, 2048, device=dev) * 3
        temp, greedy = torch.full((m, 1), 0.9, device=dev), torch.zeros(m, dtype=torch.bool, device=dev)
        expo = torch.empty(m, 50, device=dev).exponential_()
        ref = None
        for wn in (4, 1, 2, 8):
            fused.ATTN_WARPS = fused.SAMPLE_WARPS = wn
            o = fused.attn_decode(qkv, lw.qk_w, *cs, p, kc, vc, 1e-6, NH, KVH)
            c = fused.sample_topk(logits, temp, greedy, expo)
            ref = ref or (o, c)
            out.append(dict(check="warps", rows=m, warps=wn, attn_equal=bool(torch.equal(o, ref[0])),
                            sample_equal=bool(torch.equal(c, ref[1])),
                            attn_us=round(graph_us(lambda a=(qkv, lw.qk_w, *cs, p, kc, vc): fused.attn_decode(
                                *a, 1e-6, NH, KVH)), 2),
                            sample_us=round(graph_us(lambda a=(logits, temp, greedy, expo): fused.sample_topk(*a)), 2)))
            print(out[-1], flush=True)
    fused.ATTN_WARPS = fused.SAMPLE_WARPS = 4
    return out


def sampler_forms(dev: torch.device, ms: tuple[int, ...] = (1, 2, 16), reps: int = 3) -> list[dict]:
    """`sample_topk` / `sample_embed` in each form of the threshold search (`fused.SAMPLE_KEY16`: bf16 logits'
    16-bit order, or the fp32 order of logits / temp): microseconds per call as CUDA graphs (the forms interleaved,
    `reps` rounds), codes against the first form's (equal)."""
    forms = [True, False]
    out = []
    for m in ms:
        for V, dtype, emb in ((2048, torch.bfloat16, True), (3072, torch.bfloat16, False),
                              (3072, torch.float32, False)):
            args = ((torch.randn(m, V, device=dev) * 3).to(dtype), torch.full((m, 1), 0.9, device=dev),
                    torch.zeros(m, dtype=torch.bool, device=dev), torch.empty(m, 50, device=dev).exponential_())
            emb_w = torch.randn(V, 1024, device=dev).to(torch.bfloat16)
            call = (partial(lambda a, w: fused.sample_embed(*a, w)[0], args, emb_w) if emb
                    else partial(lambda a: fused.sample_topk(*a), args))
            us: dict = {f: [] for f in forms}
            codes = {}
            for _ in range(reps):
                for f in forms:
                    fused.SAMPLE_KEY16 = f
                    codes[f] = call()
                    us[f].append(graph_us(call))
            for f in forms:
                out.append(dict(check="sampler", rows=m, V=V, logits=str(dtype).split(".")[-1], embed=emb,
                                key16=f, us=round(min(us[f]), 2), us_all=[round(x, 2) for x in us[f]],
                                codes_equal=bool(torch.equal(codes[f], codes[forms[0]]))))
                print(out[-1], flush=True)
    fused.SAMPLE_KEY16 = forms[0]
    return out


def split_sweep(dev: torch.device, m: int = 16, min_bytes: float = 6e8) -> list[dict]:
    """The two matmul + residual ops at `m` rows (the predictor's down and output projections), split-K over 1-8
    programs per tile at BN 16 / 32 / 64: microseconds per call (a CUDA graph over >= `min_bytes` of weight copies,
    weights from HBM) and the result against no split."""
    out = []
    for n, k in ((H, FF), (H, NH * HD)):
        copies = max(2, int(min_bytes // (n * k * 2)))
        ws = [(torch.randn(n, k, device=dev) * 0.02).to(torch.bfloat16) for _ in range(copies)]
        x = torch.randn(m, k, device=dev).to(torch.bfloat16)
        r = torch.randn(m, n, device=dev).to(torch.bfloat16)
        base = None
        for bn, bk, warps, stages in ((32, 256, 4, 3), (16, 256, 4, 3), (64, 256, 4, 3), (32, 128, 4, 4),
                                      (16, 128, 4, 4)):
            fused.SHAPE_CONFIG[("linear_residual", n, k)] = ("dot", bn, bk, warps, stages)
            for split in (1, 2, 3, 4, 6, 8):
                if k % (split * bk):
                    continue
                y = fused.linear_residual(x, ws[0], r, split)
                base = base if base is not None else y
                us = graph_us_list(lambda w, sp=split, x=x, r=r: fused.linear_residual(x, w, r, sp), ws)
                out.append(dict(check="split", op=f"linear_residual {n}x{k}", rows=m, bn=bn, bk=bk, split=split,
                                us=round(us, 2), gbps=round(n * k * 2 / us / 1e3), rel_vs_first=rel(y, base)))
                print(out[-1], flush=True)
        fused.SHAPE_CONFIG.pop(("linear_residual", n, k), None)
    return out


def graph_us_list(fn, ws: list[torch.Tensor]) -> float:
    """Microseconds per call of fn(w), one call per weight copy in one CUDA graph (each weight read from HBM)."""
    for w in ws[:2]:
        fn(w)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for w in ws:
            fn(w)
    g.replay()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(5):
        g.replay()
    torch.cuda.synchronize()
    return 1e6 * (time.perf_counter() - t0) / 5 / len(ws)


def step_time(dev: torch.device, m: int, use_fused: bool, reps: int = 50, head: bool = False, sample: bool = False,
              split: int = 1, attn_warps: int | None = None, persist: dict | None = None,
              pdl: bool | None = None, rms_split: int | None = None, config: dict | None = None,
              consts: dict | None = None) -> dict:
    """`_step_time` with `fused.ATTN_WARPS` set to `attn_warps` (when given) for its compile, capture and replays;
    `persist`: the one-kernel step (`persistent.predictor_next`) with these module settings (grid, warps,
    tiles, sync, work: `persistent.GRID` / `NUM_WARPS` / `TILES` / `SYNC` / `WORK` overrides); `pdl`: the fused
    kernels launched with programmatic dependent launch or not (`fused.PDL`; None: its default); `rms_split`: the norm
    ops' split-K at 1-2 rows (`fused.RMS_SPLIT`); `config`: `fused.CONFIG` entries for this variant (op -> config);
    `consts`: other `fused` constants for this variant (e.g. {"GEMV_PRELOAD": true})."""
    old, old_pdl, old_split, old_cfg = fused.ATTN_WARPS, fused.PDL, fused.RMS_SPLIT, dict(fused.CONFIG)
    old_consts = {k: getattr(fused, k) for k in consts or {}}
    for k, v in (consts or {}).items():
        setattr(fused, k, v)
    fused.CONFIG.update({k: tuple(v) for k, v in (config or {}).items()})
    fused.ATTN_WARPS = attn_warps or old
    fused.PDL = old_pdl if pdl is None else pdl
    fused.RMS_SPLIT = old_split if rms_split is None else rms_split
    saved = _persist_set(persist or {})
    try:
        r = _step_time(dev, m, use_fused, reps, head, sample, split, persist is not None)
        return {**r, "attn_warps": fused.ATTN_WARPS, "pdl": fused.PDL, "rms_split": fused.RMS_SPLIT,
                **({"config": config} if config else {}), **({"consts": consts} if consts else {}),
                **({"persistent": persist} if persist is not None else {})}
    finally:
        fused.ATTN_WARPS, fused.PDL, fused.RMS_SPLIT = old, old_pdl, old_split
        for k, v in old_consts.items():
            setattr(fused, k, v)
        fused.CONFIG.clear()
        fused.CONFIG.update(old_cfg)
        _persist_set(saved)


def _persist_set(p: dict) -> dict:
    """Set persistent.GRID / NUM_WARPS / TILES / SYNC / WORK from p (keys grid, warps, tiles, sync, work; sync /
    work False: timing only); returns the old ones."""
    old = dict(grid=persistent.GRID, warps=persistent.NUM_WARPS, tiles=dict(persistent.TILES), sync=persistent.SYNC,
               work=persistent.WORK)
    persistent.SYNC = p.get("sync", persistent.SYNC)
    persistent.WORK = p.get("work", persistent.WORK)
    persistent.GRID = p.get("grid", persistent.GRID)
    persistent.NUM_WARPS = p.get("warps", persistent.NUM_WARPS)
    persistent.TILES = {**persistent.TILES, **p.get("tiles", {})}
    return old


def _step_time(dev: torch.device, m: int, use_fused: bool, reps: int, head: bool, sample: bool, split: int,
               persist: bool = False) -> dict:
    torch.manual_seed(0)  # the same weights, inputs and draws for every variant: `digest` compares their outputs
    lw = layers(dev)
    pk = [torch.zeros(S, KVH, L, HD, device=dev, dtype=torch.bfloat16) for _ in range(LAYERS)]
    pv = [torch.zeros_like(t) for t in pk]
    rot = torch.randn(L, HD, device=dev)
    cos_t, sin_t = rot.cos().to(torch.bfloat16), K.signed_sin(rot.sin()).to(torch.bfloat16)
    ar = torch.arange(L, device=dev)
    ptab = [(torch.tensor([i], device=dev), cos_t[i : i + 1, None].clone(), sin_t[i : i + 1, None].clone(),
             (ar <= i)[None]) for i in range(L)]
    norm_w = torch.ones(H, device=dev, dtype=torch.bfloat16)
    heads = [(torch.randn(V, H, device=dev) * 0.02).to(torch.bfloat16) for _ in range(15)]
    embeds = [(torch.randn(V, 2048, device=dev) * 0.02).to(torch.bfloat16) for _ in range(15)]
    proj_w = (torch.randn(H, 2048, device=dev) * 0.02).to(torch.bfloat16)
    proj_b = torch.zeros(H, device=dev, dtype=torch.bfloat16)
    ones, no = torch.ones(S, 1, device=dev), torch.zeros(S, dtype=torch.bool, device=dev)  # as the engine's buffers
    zero = torch.zeros(S, dtype=torch.long, device=dev)
    samp = K.Sampling(temp=ones, greedy=no, sub_temp=ones.clone(), sub_greedy=no.clone(), rep_pen=ones.clone(),
                      seen=torch.zeros(S, V, dtype=torch.bool, device=dev), n_sampled=zero, min_new=zero.clone())
    d = K.Dims(NH, KVH, HD, True, sample, head=head, split=split)
    fn = persistent.predictor_next if persist else K.predictor_next_fused if use_fused else K.predictor_next

    def unit(layers_, e, pk_, pv_, pos, cos, sin, mask, head_w, embed_w):
        return fn(layers_, e, pk_, pv_, pos, cos, sin, mask, proj_w, proj_b, norm_w, 1e-6, head_w, embed_w, samp, 50,
                  d)

    for t in [*pk, *pv, *samp, norm_w, proj_w, proj_b, *heads, *embeds, *(t for row in ptab for t in row),
              *(t for w in lw for t in w if isinstance(t, torch.Tensor))]:
        torch._dynamo.mark_static(t)
    cu = torch.compile(unit, dynamic=True, fullgraph=True, options={"fallback_random": True})
    e0 = torch.zeros(m, 2048, device=dev, dtype=torch.bfloat16)

    codes = []

    def frame():
        e = e0
        codes.clear()
        for j in range(1, 15):
            c, e = cu(lw, e, pk, pv, *ptab[j + 1], heads[j], embeds[j])
            codes.append(c)
        return e

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            frame()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    torch.manual_seed(1)
    e_out = frame()  # eager (the compiled units' kernels, launched one by one), from the same caches and draws
    torch.cuda.synchronize()
    digest = dict(e_sum=float(e_out.float().sum()), e_absmax=float(e_out.float().abs().max()),
                  codes=[int(x) for c in codes for x in c.reshape(-1).tolist()][:28])
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        frame()
    for _ in range(5):
        g.replay()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        g.replay()
    torch.cuda.synchronize()
    us = 1e6 * (time.perf_counter() - t0) / reps / 14
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as p:
        frame()
        torch.cuda.synchronize()
    ks = [e for e in p.events() if e.device_type.name == "CUDA"]
    top = collections.Counter()
    for e in ks:
        top[e.name[:50]] += e.device_time / 14
    return dict(rows=m, fused=use_fused, sample=sample, head=head, split=split, us_per_step=round(us, 1),
                kernels_per_step=round(len(ks) / 14, 1),
                kernel_us_per_step=round(sum(e.device_time for e in ks) / 14, 1), digest=digest,
                top=[(k, round(v, 1)) for k, v in top.most_common(8)])


def persistent_check(dev: torch.device, ms: tuple[int, ...], repeats: int = 200) -> list[dict]:
    """The one-kernel predictor step (`persistent.launch`, grid barriers) against the fused ops' step (the engine's
    default at 1-2 rows: head and sampler fused) on the same inputs and draws: the last layer's output and the
    logits (relative error, and bitwise equality), the codes and embedding rows, the caches written at pos; against
    its own phase-by-phase launch (`staged`, no barrier: bitwise equal unless the barrier lets a phase read
    unfinished data), and `repeats` launches of the one-kernel step bitwise equal to the first (a race would move)."""
    out = []
    lw = layers(dev)
    rot = torch.randn(L, HD, device=dev)
    cos_t, sin_t = rot.cos().to(torch.bfloat16), K.signed_sin(rot.sin()).to(torch.bfloat16)
    norm_w = (torch.randn(H, device=dev) * 0.1 + 1).to(torch.bfloat16)
    head_w = (torch.randn(V, H, device=dev) * 0.02).to(torch.bfloat16)
    embed_w = (torch.randn(V, 2048, device=dev) * 0.02).to(torch.bfloat16)
    proj_w = (torch.randn(H, 2048, device=dev) * 0.02).to(torch.bfloat16)
    proj_b = (torch.randn(H, device=dev) * 0.02).to(torch.bfloat16)
    weights = [t for w in lw for t in (w.ln1, w.ln2, w.qk_w, w.wqkv, w.wo, w.wgu, w.wd)]
    for m in ms:
        for pos in (2, 9, 15):
            pk0 = [torch.randn(S, KVH, L, HD, device=dev).to(torch.bfloat16) for _ in range(LAYERS)]
            pv0 = [torch.randn_like(t) for t in pk0]
            e = (torch.randn(m, 2048, device=dev) * 0.5).to(torch.bfloat16)
            p = torch.tensor([pos], device=dev)
            cos, sin = cos_t[pos : pos + 1, None], sin_t[pos : pos + 1, None]
            temp = torch.full((m, 1), 0.9, device=dev)
            greedy = torch.zeros(m, dtype=torch.bool, device=dev)
            expo = torch.empty(m, 50, device=dev).exponential_()
            # the fused ops' step (kernels.predictor_next_fused with head + sampler, split-K as the engine runs it)
            pk, pv = [t.clone() for t in pk0], [t.clone() for t in pv0]
            h = gemv_linear(e, proj_w, proj_b)
            for w, kc, vc in zip(lw, pk, pv, strict=True):
                qkv = fused.rms_linear(h, w.ln1, w.wqkv, w.eps)
                h = fused.linear_residual(fused.attn_decode(qkv, w.qk_w, cos, sin, p, kc, vc, w.qk_eps, NH, KVH),
                                          w.wo, h, 4)
                h = fused.linear_residual(fused.rms_glu(h, w.ln2, w.wgu, w.eps), w.wd, h, 4)
            lg = fused.rms_linear(h, norm_w, head_w, 1e-6)
            code, emb = fused.sample_embed(lg, temp, greedy, expo, embed_w)

            def run(staged: bool, pk0=pk0, pv0=pv0, a=(e, p, cos, sin), s=(temp, greedy, expo)):
                pk2, pv2 = [t.clone() for t in pk0], [t.clone() for t in pv0]
                caches = [t for x, y in zip(pk2, pv2, strict=True) for t in (x, y)]
                r = persistent.launch(a[0], weights, caches, *a[1:], proj_w, proj_b, norm_w, head_w, embed_w, *s,
                                      1e-6, 1e-6, 1e-6, NH, KVH, staged=staged)
                return {k: v.clone() for k, v in r.items()}, pk2, pv2

            one, pk1, pv1 = run(False)
            st, _, _ = run(True)
            same = 0
            for _ in range(repeats):
                r, _, _ = run(False)
                same += all(torch.equal(r[k], one[k]) for k in ("h", "logits", "code", "emb"))
            row = dict(check="persistent", rows=m, pos=pos, h_vs_fused=rel(one["h"], h),
                       h_equal=bool(torch.equal(one["h"], h)), logits_vs_fused=rel(one["logits"], lg),
                       logits_equal=bool(torch.equal(one["logits"], lg)),
                       codes_equal=f"{int((one['code'] == code).sum())}/{m}",
                       emb_rows_equal=bool(torch.equal(one["emb"], F.embedding(one["code"], embed_w))),
                       k_cache_vs_fused=max(rel(a[:m, :, pos], b[:m, :, pos]) for a, b in zip(pk1, pk, strict=True)),
                       v_cache_equal=all(torch.equal(a, b) for a, b in zip(pv1, pv, strict=True)),
                       staged_equal=all(torch.equal(st[k], one[k]) for k in ("h", "logits", "code", "emb")),
                       repeats_equal=f"{same}/{repeats}")
            out.append(row)
            print(row, flush=True)
    return out


def gemv_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return K.linear(x, w, b, small=True)


SWEEP = {
    "rms_linear": [("gemv", 8, 1024, 8, 1), ("gemv", 4, 1024, 4, 1), ("dot", 32, 256, 4, 3), ("dot", 32, 256, 4, 4),
                   ("dot", 32, 512, 4, 2), ("dot", 64, 256, 4, 3), ("dot", 32, 256, 8, 3), ("dot", 16, 512, 4, 2),
                   ("dot", 64, 512, 8, 2)],
    "rms_glu": [("gemv", 8, 512, 8, 1), ("gemv", 4, 512, 4, 1), ("dot", 32, 256, 4, 3), ("dot", 32, 256, 4, 4),
                ("dot", 32, 512, 4, 2), ("dot", 64, 256, 4, 3), ("dot", 32, 256, 8, 3), ("dot", 16, 512, 4, 2),
                ("dot", 64, 256, 8, 3)],
    "linear_residual": [("gemv", 8, 1024, 8, 1), ("gemv", 4, 1024, 4, 1), ("gemv", 2, 1024, 4, 1),
                        ("gemv", 4, 1024, 8, 1), ("gemv", 2, 1024, 2, 1)],
}
# the tl.dot forms above 2 rows (`fused.DOT_CONFIG`): swept with --sweep-rows above 2
SWEEP_DOT = [("dot", 32, 256, 4, 3), ("dot", 16, 256, 4, 3), ("dot", 16, 512, 4, 2), ("dot", 16, 128, 4, 4),
             ("dot", 32, 128, 4, 4), ("dot", 16, 256, 2, 3), ("dot", 64, 256, 4, 3), ("dot", 32, 512, 4, 2)]


def sweep(dev: torch.device, only: str = "", min_bytes: float = 6e8, ms: tuple[int, ...] = (1, 2),
          skip: str = "", splits: tuple[int, ...] = (1,)) -> list[dict]:
    """Each op's configurations (`SWEEP`) at the predictor's shapes, 1 and 2 rows: a CUDA graph of one call per
    weight copy over >= `min_bytes` of copies (weights come from HBM, as in a step), microseconds per call;
    beside it cuBLAS (`F.linear`) on the same matrix and the eager unfused chain's kernels for reference.
    `splits` other than (1,): every tl.dot form (the matmul + residual op's too, at 1-2 rows) also split-K that
    many ways (`fused.RMS_SPLIT` for the norm ops, the op's `split` for the matmul + residual)."""
    shapes = {"rms_linear": ((NH + 2 * KVH) * HD, H), "rms_glu": (2 * FF, H), "linear_residual": (H, FF),
              "linear_residual/o": (H, NH * HD),  # the code predictor's; then the talker's (hidden 2048, MLP 6144)
              "rms_linear/talker": (4096, 2048), "rms_glu/talker": (2 * 6144, 2048),
              "linear_residual/talker-down": (2048, 6144), "linear_residual/talker-o": (2048, 2048)}
    out = []
    for name, (n, k) in shapes.items():
        if only not in name or (skip and skip in name):
            continue
        op = name.split("/")[0]
        copies = max(2, int(min_bytes // (n * k * 2)))
        ws = [(torch.randn(n, k, device=dev) * 0.02).to(torch.bfloat16) for _ in range(copies)]
        ln = torch.ones(k, device=dev, dtype=torch.bfloat16)
        for m in ms:
            x = torch.randn(m, k, device=dev).to(torch.bfloat16)
            r = torch.randn(m, n, device=dev).to(torch.bfloat16)

            def call(w, x=x, r=r, op=op, ln=ln, split=1):
                if op == "rms_linear":
                    return fused.rms_linear(x, ln, w, 1e-6)
                if op == "rms_glu":
                    return fused.rms_glu(x, ln, w, 1e-6)
                return fused.linear_residual(x, w, r, split)

            cfgs = SWEEP[op] if m <= fused.GEMV_ROWS else SWEEP_DOT
            if splits != (1,) and op == "linear_residual" and m <= fused.GEMV_ROWS:
                cfgs = [*cfgs, *SWEEP_DOT]
            rms_split, max_k = fused.RMS_SPLIT, fused.RMS_SPLIT_MAX_K
            fused.RMS_SPLIT_MAX_K = max_k if splits == (1,) else k  # the norm ops split at any K in a split sweep
            for cfg in [*cfgs, "cublas"]:
                for sp in splits if cfg != "cublas" and cfg[0] == "dot" else (1,):
                    if cfg != "cublas":
                        fused.SHAPE_CONFIG[(op, n // 2 if op == "rms_glu" else n, k)] = cfg
                    fused.RMS_SPLIT = sp if splits != (1,) else rms_split
                    fn = (lambda w, x=x: F.linear(x, w)) if cfg == "cublas" else partial(call, split=sp)
                    us = graph_us_list(fn, ws)
                    out.append(dict(op=name, rows=m, config=cfg, split=sp, us=round(us, 2),
                                    gbps=round(n * k * 2 / us / 1e3)))
                    print(out[-1], flush=True)
            fused.RMS_SPLIT, fused.RMS_SPLIT_MAX_K = rms_split, max_k
    return out


def graph_us(fn, n: int = 20) -> float:
    """Microseconds per call of fn, as a CUDA graph of n calls."""
    fn()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(n):
            fn()
    g.replay()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        g.replay()
    torch.cuda.synchronize()
    return 1e6 * (time.perf_counter() - t0) / 10 / n


def sample_check(dev: torch.device) -> list[dict]:
    """`fused.sample_topk` against the unfused sampler with the same draws: codes equal, and time per call (both as
    CUDA graphs; the unfused one compiled as the engine compiles it)."""
    out = []
    ref_c = torch.compile(fused._ref_sample, dynamic=False, options={"fallback_random": True})
    for b in (2, 16, 64):
        for V in (2048, 3072):
            logits = torch.randn(b, V, device=dev) * 3
            temp = torch.full((b, 1), 0.9, device=dev)
            greedy = torch.zeros(b, dtype=torch.bool, device=dev)
            same = 0
            for _ in range(20):
                expo = torch.empty(b, 50, device=dev).exponential_()
                same += int((fused.sample_topk(logits, temp, greedy, expo) ==
                             fused._ref_sample(logits, temp, greedy, expo)).sum())
            args = (logits, temp, greedy, torch.empty(b, 50, device=dev).exponential_())
            row = dict(rows=b, vocab=V, codes_equal=f"{same}/{20 * b}",
                       fused_us=round(graph_us(lambda a=args: fused.sample_topk(*a)), 2),
                       unfused_compiled_us=round(graph_us(lambda a=args: ref_c(*a)), 2))
            out.append(row)
            print(row, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--rows", default="1,2", help="step rows for the error check and the step times (the fused "
                    "layer's tl.dot forms hold up to 16: EngineConfig.fused_rows)")
    ap.add_argument("--sweep", action="store_true", help="time each op's configurations (SWEEP) first")
    ap.add_argument("--skip-steps", action="store_true", help="no step times (checks only)")
    ap.add_argument("--variants", type=json.loads, default=None, help='fused step variants to time instead of '
                    'unfused/fused, e.g. \'[{"sample": true}, {"sample": true, "split": 4}]\' (step_time arguments)')
    ap.add_argument("--warps", action="store_true", help="time attn_decode and sample_topk at 1-8 warps")
    ap.add_argument("--sampler", action="store_true", help="time the sampler's threshold-search forms at 1-16 rows")
    ap.add_argument("--split-sweep", action="store_true", help="time the matmul + residual op split-K at 16 rows")
    ap.add_argument("--levers", action="store_true", help="also check sample_embed against sample_topk")
    ap.add_argument("--persistent", action="store_true", help="check the one-kernel predictor step against the "
                    "fused ops' step (`persistent_check`) before the step times")
    ap.add_argument("--sweep-only", default="", help="sweep only the shapes whose name holds this (e.g. talker)")
    ap.add_argument("--sweep-skip", default="", help="skip the shapes whose name holds this (e.g. talker)")
    ap.add_argument("--sweep-split", default="1", help="split-K ways of the sweep's tl.dot forms, e.g. 1,2,4,8")
    ap.add_argument("--sweep-exit", action="store_true", help="stop after the sweep (write it, no checks)")
    ap.add_argument("--sweep-rows", default="1,2", help="rows of the sweep; above 2 the tl.dot forms (SWEEP_DOT)")
    ap.add_argument("--pick-dot", action="store_true", help="after a sweep above 2 rows: set fused.DOT_CONFIG to "
                    "each op's fastest there (its predictor shape, the most rows swept) and time the steps again")
    ap.add_argument("--config", type=json.loads, default=None,
                    help='fused.CONFIG overrides for the step rows, e.g. \'{"rms_linear": ["dot", 32, 128, 4, 4]}\'')
    a = ap.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    info = dict(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), gpu=torch.cuda.get_device_name(),
                gpu_uuid=str(getattr(torch.cuda.get_device_properties(0), "uuid", "")),
                torch=torch.__version__)
    print(info, flush=True)
    srows = tuple(int(x) for x in a.sweep_rows.split(","))
    swept = (sweep(dev, a.sweep_only, ms=srows, skip=a.sweep_skip,
                   splits=tuple(int(x) for x in a.sweep_split.split(","))) if a.sweep else [])
    if a.sweep_exit:
        if a.out:
            a.out.mkdir(parents=True, exist_ok=True)
            (a.out / "fused.json").write_text(json.dumps(dict(info=info, sweep=swept), indent=2))
        return
    fused.SHAPE_CONFIG.clear()
    fused.CONFIG.update({k: tuple(v) for k, v in (a.config or {}).items()})
    print("config:", fused.CONFIG, flush=True)
    samples = sample_check(dev)
    ms = tuple(int(x) for x in a.rows.split(","))
    errs = op_errors(dev, ms) + preload_checks(dev, ms)
    for r in errs:
        print(r, flush=True)
    checks = head_check(dev, ms) if a.levers else []
    checks += persistent_check(dev, (1, 2)) if a.persistent else []
    checks += warps_sweep(dev, ms) if a.warps else []
    checks += split_sweep(dev) if a.split_sweep else []
    checks += sampler_forms(dev) if a.sampler else []
    times = []
    for m in ms if not a.skip_steps else ():
        for use in (False, True) if not a.variants else ():
            times.append(step_time(dev, m, use))
            print(times[-1], flush=True)
        for v in a.variants or []:  # e.g. {"sample": true, "head": true}: the fused step with these levers
            times.append(step_time(dev, m, True, **v))
            print(times[-1], flush=True)
    if a.pick_dot and swept and max(srows) > fused.GEMV_ROWS:
        top = max(srows)
        for op in fused.DOT_CONFIG:
            cands = [r for r in swept if r["op"] == op and r["rows"] == top and r["config"] != "cublas"]
            if cands:
                fused.DOT_CONFIG[op] = tuple(min(cands, key=lambda r: r["us"])["config"])
        print("picked DOT_CONFIG:", fused.DOT_CONFIG, flush=True)
        for m in ms:
            if m > fused.GEMV_ROWS:
                times.append({**step_time(dev, m, True), "dot_config": dict(fused.DOT_CONFIG)})
                print(times[-1], flush=True)
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        res = dict(info=info, config=fused.CONFIG, dot_config=fused.DOT_CONFIG, sweep=swept, sample=samples,
                   errors=errs, lever_checks=checks, steps=times)
        (a.out / "fused.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
