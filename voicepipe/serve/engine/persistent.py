"""The code predictor's single step (`kernels.predictor_next`) as one persistent Triton kernel, for 1-2 rows.

At one stream a frame step runs 14 predictor steps of 30 kernels each (`fused.py`: 5 layers x 5 ops, the head,
the sampler), and each ~5 us kernel is mostly launch and tail: the step reads ~155 MB of weights, ~36 us at the
H200's 4.3 TB/s, and takes ~170 us. Here one launch does the whole step (`_persistent_kernels.predictor_step`): the
input projection, each layer's norm + q/k/v, attention with the cache write, output projection + residual, norm +
gate/up + SiLU, down projection + residual, then the final norm + code head and the sampler with the code's
embedding row, each phase spread over P programs (at most one per SM, so all are resident) with a grid-wide
barrier between phases. The race's exponential draws are made by torch before the launch, as `kernels.sample`
draws them, so the codes for a seed are the fused path's.

Numerics follow `fused.py`'s ops (the same bf16 rounding points; every matmul on CUDA cores in fp32, as
`_fused_kernels._rms_gemv` / `_gemv_res`), so results agree with the fused path to summation order (its norm ops'
tensor-core form at 1-2 rows sums differently). `EngineConfig.persistent_predictor` switches it on; off by default:
on an H200 the step took 162 us against the fused ops' 170 as a graph of 14 steps, but the engine's 2-row frame step
did not get shorter (benchmarks/RESULTS.md, 2026-12-04 14:45 UTC). Off CUDA, the kernel runs in Triton's interpreter
phase by phase (`staged=True`: one launch per phase, no barrier), which is how the CPU tests check it.
"""

from __future__ import annotations

import functools
import math
import os

import torch

from voicepipe.serve.engine import fused

GRID = 128  # programs of the persistent launch (H200: 132 SMs; 128 divides the phases' tiles evenly)
NUM_WARPS = 8
# weight rows per tile, per phase (the 1.7B predictor's matrices at GRID 128: one tile a program, gate/up three).
# A program loads its first tile of a phase during the phase before, ahead of the barrier, and holds it in
# registers (H200, 2026-12-04: the step 190 -> 168 us; gate/up tiles of 8 rows instead of 16: 169 -> 161 us)
TILES = {"proj": 8, "qkv": 32, "o": 8, "glu": 8, "down": 8, "head": 16}
MAX_ROWS = 2
# timing only (wrong results): SYNC False runs no grid barriers; WORK: a bit mask of the phases that run (bit 0
# the projection, 1-5 a layer's five, 6 the head, 7 the sampler; `benchmarks/fused.py`)
SYNC = True
WORK = 255


@functools.cache
def _kernel():
    import importlib

    return importlib.import_module("voicepipe.serve.engine._persistent_kernels").predictor_step


def available(device: torch.device) -> bool:
    return fused.available(device)


def supported(e: torch.Tensor, layers: list, head_w: torch.Tensor, embed_w: torch.Tensor, nh: int, kvh: int,
              proj_w: torch.Tensor | None) -> bool:  # fmt: skip
    """Whether the persistent step can run these shapes: 1-2 rows of bf16 on a device with the kernels, a
    power-of-two head size, one epsilon for all layers' norms."""
    if not (e.dim() == 2 and e.shape[0] <= MAX_ROWS and e.dtype == torch.bfloat16 and available(e.device)):
        return False
    w0 = layers[0]
    H = w0.wqkv.shape[1]
    hd = w0.qk_w.shape[1]
    E = embed_w.shape[1]
    ok = (hd & (hd - 1) == 0 and head_w.shape[1] == H and embed_w.stride(1) == 1 and embed_w.is_contiguous()
          and len({(w.eps, w.qk_eps) for w in layers}) == 1 and H <= 1024 * GRID)
    if proj_w is None:
        return ok and E == H
    return ok and proj_w.shape == (H, E)


_TABLES: dict[tuple, torch.Tensor] = {}
_BARRIERS: dict[torch.device, torch.Tensor] = {}


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _table(base: torch.Tensor, per_layer: list[list[torch.Tensor]]) -> torch.Tensor:
    """Per layer, each tensor's offset from `base` in elements (int64 [layers, 9]), cached by the tensors'
    addresses (made on the first call, outside a CUDA-graph capture: the engine's warm-up steps)."""
    key = (base.data_ptr(), *(t.data_ptr() for ts in per_layer for t in ts))
    tab = _TABLES.get(key)
    if tab is None:
        if _capturing(base.device):
            raise RuntimeError("persistent predictor: its offset table is made by an eager call before a capture")
        offs = []
        for ts in per_layer:
            row = []
            for t in ts:
                d = t.data_ptr() - base.data_ptr()
                if d % 16 or t.dtype != torch.bfloat16 or not t.is_contiguous():
                    raise ValueError("persistent predictor: weights and caches must be contiguous, 16-byte aligned "
                                     "bf16")
                row.append(d // 2)
            offs.append(row)
        tab = _TABLES[key] = torch.tensor(offs, dtype=torch.int64, device=base.device)
    return tab


def _barrier(device: torch.device) -> torch.Tensor:
    """The grid barrier's state on `device` (arrival count, generation), zero at first; every launch leaves the
    count at zero. Launches on one device share it: they run one at a time (one stream)."""
    b = _BARRIERS.get(device)
    if b is None:
        if _capturing(device):
            raise RuntimeError("persistent predictor: its barrier state is made by an eager call before a capture")
        b = _BARRIERS[device] = torch.zeros(2, dtype=torch.int32, device=device)
    return b


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@torch.library.custom_op("voicepipe::predictor_step", mutates_args=("caches",))
def predictor_step(e: torch.Tensor, weights: list[torch.Tensor], caches: list[torch.Tensor], pos: torch.Tensor,
                   cos: torch.Tensor, sin: torch.Tensor, proj_w: torch.Tensor | None, proj_b: torch.Tensor | None,
                   norm_w: torch.Tensor, head_w: torch.Tensor, embed_w: torch.Tensor, temp: torch.Tensor,
                   greedy: torch.Tensor, expo: torch.Tensor, eps: float, qk_eps: float, norm_eps: float, nh: int,
                   kvh: int, grid: int = 0, staged: bool = False) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """One predictor step in one launch (`staged`: one launch per phase, no barrier; the interpreter's way).
    e [b, E]: the previous code's embedding; weights: per layer ln1, ln2, qk_w, wqkv, wo, wgu, wd (7 x layers);
    caches: per layer its K then V cache [S, kvh, L, hd], written at `pos`; temp [b, 1] / greedy [b] / expo [b, k]
    as `fused.sample_embed` takes them. Returns (codes [b], their embedding rows [b, E])."""
    out = launch(e, weights, caches, pos, cos, sin, proj_w, proj_b, norm_w, head_w, embed_w, temp, greedy, expo, eps,
                 qk_eps, norm_eps, nh, kvh, grid, staged)
    return out["code"], out["emb"]


def launch(e: torch.Tensor, weights: list[torch.Tensor], caches: list[torch.Tensor], pos: torch.Tensor,
           cos: torch.Tensor, sin: torch.Tensor, proj_w: torch.Tensor | None, proj_b: torch.Tensor | None,
           norm_w: torch.Tensor, head_w: torch.Tensor, embed_w: torch.Tensor, temp: torch.Tensor, greedy: torch.Tensor,
           expo: torch.Tensor, eps: float, qk_eps: float, norm_eps: float, nh: int, kvh: int, grid: int = 0,
           staged: bool = False, phases: int | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """`predictor_step`'s launch; returns its buffers: code, emb, and for checks h (the residual stream), qkv, o
    (attention output), a (SiLU(gate) * up), logits (bf16). `phases` (staged only): run the first this many phase
    launches (0: the projection, then 5 per layer, the head, the sampler) and stop."""
    n_layers = len(weights) // 7
    per_layer = [[*weights[7 * i : 7 * i + 7], caches[2 * i], caches[2 * i + 1]] for i in range(n_layers)]
    base = weights[0]
    dev = e.device
    tab = _table(base, per_layer)
    b, E = e.shape
    ln1, ln2, qk_w, wqkv, wo, wgu, wd = weights[:7]
    H, hd, ff = wqkv.shape[1], qk_w.shape[1], wd.shape[1]
    kc = caches[0]
    L = kc.shape[2]
    V = head_w.shape[0]
    k = expo.shape[1]
    P = grid or GRID
    h = torch.empty(b, H, device=dev, dtype=e.dtype)  # rows beyond b are masked in every load and store
    qkv = torch.empty(b, (nh + 2 * kvh) * hd, device=dev, dtype=e.dtype)
    o = torch.empty(b, nh * hd, device=dev, dtype=e.dtype)
    a = torch.empty(b, ff, device=dev, dtype=e.dtype)
    lg = torch.empty(b, V, device=dev, dtype=e.dtype)
    kp = _pow2(k)
    scr = torch.empty(b, kp, device=dev, dtype=torch.int32)
    code = torch.empty(b, device=dev, dtype=torch.long)
    e_out = torch.empty(b, E, device=dev, dtype=embed_w.dtype)
    e, expo = e.contiguous(), expo.contiguous()
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    staged = staged or interp
    args = (base, tab, e, proj_w if proj_w is not None else e, proj_b if proj_b is not None else e, h, qkv, o, a, lg,
            norm_w, head_w, embed_w, temp, greedy, expo, scr, code, e_out, cos.reshape(-1), sin.reshape(-1), pos,
            _barrier(dev) if not staged else tab, b, eps, qk_eps, norm_eps, 1.0 / math.sqrt(hd), kc.stride(0),
            kc.stride(1), kc.stride(2), temp.stride(0), expo.stride(0), k)
    meta = dict(H=H, E=E, NH=nh, KVH=kvh, HD=hd, FF=ff, L=L, V=V, VP=_pow2(V), KP=kp, EP=_pow2(E), HP=_pow2(H),
                FFP=_pow2(ff), OP=_pow2(nh * hd), PROJ=proj_w is not None, PROJ_BIAS=proj_b is not None, P=P,
                BN_PROJ=TILES["proj"],
                BN_QKV=TILES["qkv"], BN_O=TILES["o"], BN_GLU=TILES["glu"], BN_DOWN=TILES["down"],
                BN_HEAD=TILES["head"], num_warps=NUM_WARPS, num_stages=1, SYNC=SYNC, WORK=WORK)
    kern = _kernel()
    bufs = dict(code=code, emb=e_out, h=h, qkv=qkv, o=o, a=a, logits=lg)
    if not staged:
        kern[(P,)](*args, 0, n_layers, STAGE=-1, **meta)
        return bufs
    plan = [(0, 0, 0), *((stage, layer, layer + 1) for layer in range(n_layers) for stage in range(1, 6)),
            (6, 0, 0), (7, 0, 0)]
    for stage, lo, hi in plan[:phases]:
        kern[(P,)](*args, lo, hi, STAGE=stage, **meta)
    return bufs


@predictor_step.register_fake
def _(e, weights, caches, pos, cos, sin, proj_w, proj_b, norm_w, head_w, embed_w, temp, greedy, expo, eps, qk_eps,
      norm_eps, nh, kvh, grid=0, staged=False):  # fmt: skip
    return e.new_empty(e.shape[0], dtype=torch.long), embed_w.new_empty(e.shape[0], embed_w.shape[1])


def predictor_next(layers: list, e: torch.Tensor, pk: list[torch.Tensor], pv: list[torch.Tensor], pos: torch.Tensor,
                   cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor, proj_w: torch.Tensor | None,
                   proj_b: torch.Tensor | None, norm_w: torch.Tensor, eps: float, head_w: torch.Tensor,
                   embed_w: torch.Tensor, s, top_k: int, d) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """`kernels.predictor_next_fused` (head and sampler fused) as one launch where `supported`, else that unit
    itself. The exponential draws are made as `kernels.sample` makes them, so a seed gives the same codes."""
    from voicepipe.serve.engine import kernels as K

    b = e.shape[0]
    if not supported(e, layers, head_w, embed_w, d.nh, d.kvh, proj_w):
        return K.predictor_next_fused(layers, e, pk, pv, pos, cos, sin, mask, proj_w, proj_b, norm_w, eps, head_w,
                                      embed_w, s, top_k, d._replace(head=True, sample=True))
    weights = [t for w in layers for t in (w.ln1, w.ln2, w.qk_w, w.wqkv, w.wo, w.wgu, w.wd)]
    caches = [t for kc, vc in zip(pk, pv, strict=True) for t in (kc, vc)]
    expo = torch.empty(b, min(top_k, head_w.shape[0]), device=e.device).exponential_()  # as `kernels.sample`
    return predictor_step(e, weights, caches, pos, cos, sin, proj_w, proj_b, norm_w, head_w, embed_w,
                          s.sub_temp[:b], s.sub_greedy[:b], expo, float(layers[0].eps), float(layers[0].qk_eps),
                          float(eps), d.nh, d.kvh)
