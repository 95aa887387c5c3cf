"""The code predictor's decoder layer as five Triton kernels, for frame steps of 1-16 rows.

A frame step runs the code predictor's 5 layers 15 times: 75 small layer passes, each ~11 kernels under inductor
(norm, q/k/v matmul, q/k norm + RoPE, two cache writes, SDPA, output matmul, residual + norm, gate/up matmul,
SiLU·mul, down matmul), every one a few microseconds of launch and tail on a 1024-wide vector. Here a layer is five:

- `rms_linear`: RMSNorm in the prologue of the fused q/k/v GEMV (each program re-reads the 1024-wide row: it is
  in L1/L2, the weights are the traffic);
- `attn_decode`: per (row, KV head): the q/k head norms, RoPE, the K/V cache write at the step's position, and
  attention of the KV head's query heads over the 16-slot cache (at most 16 keys fit in registers);
- `linear_residual` (twice): GEMV + residual add (attention output projection, MLP down projection);
- `rms_glu`: RMSNorm prologue, gate and up rows of the fused gate/up weight in one program, SiLU(gate)·up epilogue.

The matmul core is a GEMV without tensor cores (`gemv.py`'s form, 1-2 rows) or `tl.dot` tiles with the rows padded
to 16, per op (`CONFIG`, from `benchmarks/fused.py --sweep`; above `GEMV_ROWS` rows always `tl.dot`; there the
matmul + residual op may split K over several programs per output tile, `split`, deterministic). Also here:
`sample_topk`, the step's top-k sampling as one kernel per call at any batch size (a threshold search instead of a
sort; the same exponential draws), and `sample_embed`, the same with the picked code's embedding row written by it.

The kernels' Triton source is `_fused_kernels.py` (imported on first use); here are the switches that pick their
forms, the ops and their launches. Each is a custom op (opaque to torch.compile, capturable in CUDA graphs). On GPUs
of compute capability 9.0+ the fused kernels are launched with programmatic dependent launch (`PDL`): each loads its
first weight tile before waiting for the kernel before it, so launches and first loads overlap the previous kernel's
tail.
Numerics follow the unfused path's bf16 rounding points (every place the eager math stores a bf16 tensor, the
kernel rounds), summation order differs, so results agree to bf16 rounding, not bit for bit
(`tests/test_serve_engine_fused.py` runs the kernels in Triton's interpreter where Triton is installed;
`benchmarks/serve.py --systems numerics` on a GPU). Off CUDA, without Triton, or above `DOT_ROWS` rows, the ops run
the reference math of `kernels.py` (same functions, unfused).
Hand-written because no library fuses a whole decoder layer for a few rows, nor top-k sampling without a sort (nor
with the embedding lookup behind it); cuBLAS's own split-K for these shapes is a matmul kernel plus a reduce kernel
and cannot add the residual and round where the unfused path does.
"""

from __future__ import annotations

import functools
import math
import os

import torch
import torch.nn.functional as F

from voicepipe.serve.engine import gemv

GEMV_ROWS = 2  # rows the GEMV form holds; above it the ops take their tl.dot form (one 16-row tile)
DOT_ROWS = 16  # rows up to which the ops run fused at all
_BK = 1024  # K must be a multiple of this (the predictor's 1024 / 2048 / 3072)
# per op: (kernel, BN, BK, warps, stages); "gemv": no tensor cores, "dot": tl.dot tiles with rows padded to 16
# (`benchmarks/fused.py --sweep` times the alternatives; H200, 2026-12-03 22:3x UTC, 1-2 rows: q/k/v 6.1 us against
# 7.8-8.2 for the GEMV form, gate/up + SiLU 7.1-7.3 against 12.6, down / output projection 5.1-5.3 / 4.0-4.2 against
# 5.8-6.0 / 4.7-4.8)
CONFIG: dict[str, tuple[str, int, int, int, int]] = {
    "rms_linear": ("dot", 32, 256, 4, 3),
    "rms_glu": ("dot", 32, 256, 4, 3),
    "linear_residual": ("gemv", 4, 1024, 4, 1),
}
# warps of one program of `attn_decode` (one row and KV head) and of `sample_topk` (one row): latency-bound
# (`benchmarks/fused.py --warps`, H200 2026-12-04: attention 5.0 / 4.2 / 4.2 / 6.4 us at 4 / 2 / 1 / 8 warps, 2 rows;
# sampling 12.4 us at 4 warps, 16-24 at 1-2)
ATTN_WARPS = 2
SAMPLE_WARPS = 4
# the sampler's threshold search on bf16 logits over their 16-bit order (17 halvings) rather than the fp32 order of
# logits / temp (33): the same top k (`_fused_kernels._topk_mask`). H100, 2026-12-06: one call 12.7 -> 9.4 us
# (predictor, 2048 codes), 16.6 -> 12.5 us (talker, 3072); one stream RTF 0.0527 -> 0.0520, 16 streams 212.6x ->
# 215.0x (benchmarks/RESULTS.md, serve)
SAMPLE_KEY16 = True
# warps of `attn_decode` at 1-`GEMV_ROWS` rows (None: `ATTN_WARPS`). H100, 2026-12-06: a 2-row predictor step 165.0 us
# at 2 warps, 156.5 at 1 (`benchmarks/fused.py`; 181.8 at 4); one stream RTF 0.0602 -> 0.0589, 16 streams 208x either
ATTN_WARPS_FEW: int | None = 1
# warps of one program of the talker's attention (`attn_decode_rows`: one row and query head), and the software
# pipelining stages of its walk over the cache's blocks (1: none)
ROWS_ATTN_WARPS = 2
ROWS_ATTN_STAGES = 1
# the talker's attention split over runs of the cache's blocks per (row, query head), joined by the last to finish
# (flash-decoding; 1: one program walks them all): (at most this many rows, this many runs), the first that fits;
# more rows than the last entry: 1. A 2-row step has 32 programs at split 1 for an H100's 132 SMs. H100, 2026-12-06,
# against split 1 in the same run: one stream (2 rows) RTF 0.0602 -> 0.0582 at split 2, 0.0575 at 4; 16 streams 208.2x
# -> 212.3x at 2, 209.2x at 4. With the 1-warp predictor attention, against neither (a second run): RTF 0.0600 ->
# 0.0566; 4 / 8 / 16 streams 60.8 / 115.7 / 208.2x -> 63.0 / 119.3 / 211.6x (split 4 to 8 rows; 62.2 / 118.0x with 2)
ROWS_ATTN_SPLIT: tuple[tuple[int, int], ...] | int = ((8, 4), (16, 2))
# programmatic dependent launch for the fused kernels (`_pdl`): each loads its first weight tile, waits
# for the kernel before it (`gdc_wait`), then lets the next one launch. None: on where the GPU has it (compute
# capability 9.0+). H100, 2026-12-05: outputs bitwise equal; predictor step 213 -> 203 us at 16 rows, 196 -> 191 at 2;
# 16 streams 192 -> 198x; one stream unchanged (benchmarks/RESULTS.md, serve)
PDL: bool | None = None
# split-K of the norm ops' tl.dot form at 1-2 rows (`_rms_dot` SPLIT: more programs on the predictor's few output
# tiles, partials added in split order, deterministic); 1 = off. 2-row predictor step, 2026-12-05: H200 181.6 ->
# 173.6 us, H100 190 -> 185 us (split 4: 209 us; BN 16 / 64 or BK 128 / 512 with split 2: 188-214 us); one stream
# RTF 0.061 -> 0.059 (H200); 0.06 % of outputs differ from the unsplit kernel by one bf16 rounding
RMS_SPLIT = 2
# ... for K of at most this (the predictor's 1024). The talker's norm ops (K 2048, `EngineConfig.fused_talker_mm`)
# have enough output tiles unsplit: H100, one row, q/k/v 9.6 -> 10.0 us and gate/up 19.9 -> 21.8 us at split 2
RMS_SPLIT_MAX_K = 1024
# The four preload/alignment switches below: outputs bitwise equal with them off or on (the same sums in the same
# order). H100, 2026-12-05 (benchmarks/RESULTS.md, serve): 2-row predictor step 184.5 -> 164.8 us with the first
# three, 16-row step 202.6 -> 182.0 us with SPLIT_ALIGN and RMS_PRELOAD; engines one stream RTF 0.063 -> 0.060, 16
# streams 199x -> 209x. Off keeps the code they replaced (the same PTX as the kernels measured before them).
# the matmul + residual op's GEMV form (1-2 rows) loads all of its program's weight tiles (up to 4) before it waits
# for the kernel before it, instead of one, then a K loop whose every tile load waits behind the previous tile's
# products (sm_90 SASS: the loop's x goes through shared memory with barriers, and no load moves above them).
# Alone: 184.5 -> 178.5 us a 2-row step
GEMV_PRELOAD = True
# the norm ops' tl.dot form: the rms pass unrolled (its x tiles asked for at once, where a runtime loop waits for
# each in turn) and the program's second weight tile loaded before the wait as well as its first. Alone: 184.5 ->
# 173.7 us a 2-row step (gate/up at 8 warps with it: 188.0, not kept)
RMS_PRELOAD = True
# the predictor's attention loads its position, RoPE rows and cache rows below the position before the wait, the
# q/k/v row after it. Alone: 184.5 -> 183.4 us a 2-row step; with the other two 164.8 (they overlap more with it)
ATTN_PRELOAD = True
# the matmul + residual op's tl.dot form (3-16 rows) told that a split's K range starts at a multiple of its K tile
# (`_split_counters` guarantees it), which Triton cannot infer from K // split: at split 4 (the default
# `EngineConfig.fused_split_k`) its weight and x loads become 128-bit instead of 64-bit, 95 registers instead of 152
# (sm_90 SASS, `benchmarks/fused_sass.py dot_res --split 4`). Alone: 202.6 -> 198.2 us a 16-row step
SPLIT_ALIGN = True
# cache positions per block of the talker's fused attention (`attn_decode_rows`, `EngineConfig.fused_talker_attn`)
ROWS_ATTN_BLOCK = 64
# per (op, N, K): another configuration than the op's default (N: output columns); `benchmarks/fused.py --sweep`
# sets it to time each configuration on a shape
SHAPE_CONFIG: dict[tuple[str, int, int], tuple[str, int, int, int, int]] = {}


def available(device: torch.device) -> bool:
    """Whether the fused kernels can run on `device`: CUDA with Triton, or CPU under TRITON_INTERPRET=1 (tests)."""
    if device.type == "cuda":
        return gemv.available(device)
    return os.environ.get("TRITON_INTERPRET") == "1" and gemv.available(torch.device("cuda"))


@functools.cache
def _kernels():
    from voicepipe.serve.engine import _fused_kernels as k

    return {"gemv": k._rms_gemv, "dot": k._rms_dot}, k._gemv_res, k._attn, k._sample, k._dot_res, k._attn_rows


def _rows(x: torch.Tensor) -> int:
    return x.shape[0]


def _use(x: torch.Tensor, K: int) -> bool:
    return (_rows(x) <= DOT_ROWS and K % _BK == 0 and x.dtype == torch.bfloat16 and available(x.device))


_DOT = ("dot", 32, 256, 4, 3)
# per op: the configuration above GEMV_ROWS rows (always a tl.dot form; a SHAPE_CONFIG entry of the dot kind wins)
DOT_CONFIG: dict[str, tuple[str, int, int, int, int]] = {"rms_linear": _DOT, "rms_glu": _DOT, "linear_residual": _DOT}


def _config(op: str, N: int, K: int, M: int) -> tuple[str, int, int, int, int]:
    cfg = SHAPE_CONFIG.get((op, N, K), CONFIG[op])
    return DOT_CONFIG[op] if M > GEMV_ROWS and cfg[0] != "dot" else cfg  # GEMV holds at most GEMV_ROWS rows


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _gdc_available() -> bool:
    try:
        from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _has_pdl(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9 and _gdc_available()


def _pdl(device: torch.device, ok: bool = True) -> dict:
    """Launch options of a kernel with its PDL switch: on where `PDL` says (None: on a GPU of compute capability
    9.0+), never in Triton's interpreter (no inline PTX there)."""
    on = _has_pdl(device) if PDL is None else PDL
    return {"PDL": True, "launch_pdl": True} if on and ok and not _interpreted() else {}


# ---------------------------------------------------------------- reference math (the unfused path, kernels.py's)
def _ref_rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    from voicepipe.serve.engine.kernels import _rms

    return _rms(x, w, eps)


# ---------------------------------------------------------------- ops
@torch.library.custom_op("voicepipe::rms_linear", mutates_args=())
def rms_linear(x: torch.Tensor, ln: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """F.linear(rms_norm(x) * ln, w) for x [b, K] (fused for up to `DOT_ROWS` rows)."""
    M, K = x.shape
    if not _use(x, K):
        return F.linear(_ref_rms(x, ln, eps), w)
    return _launch_rms(x, ln, w, w.shape[0], eps, False)


def _launch_rms(x: torch.Tensor, ln: torch.Tensor, w: torch.Tensor, N: int, eps: float, glu: bool) -> torch.Tensor:
    M, K = x.shape
    op = "rms_glu" if glu else "rms_linear"
    kind, bn, bk, warps, stages = _config(op, N, K, M)
    y = torch.empty(M, N, device=x.device, dtype=x.dtype)
    x = x.contiguous()
    extra: dict = {} if kind == "gemv" else {"DOT_F32": _interpreted()}
    split = RMS_SPLIT if kind == "dot" and M <= GEMV_ROWS and K <= RMS_SPLIT_MAX_K else 1
    cnt = _split_counters(x.device, split, N, K, bn, bk)
    split = split if cnt is not None else 1
    if cnt is not None:
        ws = torch.empty(split, 2, 16, N, device=x.device, dtype=torch.float32)
        extra.update(ws_ptr=ws, cnt_ptr=cnt, SPLIT=split)
    if kind == "dot" and RMS_PRELOAD:
        extra.update(KC=K, PRE=2 if K // split >= 2 * bk else 1)
    _kernels()[0][kind][(_cdiv(N, bn), split)](
        x, ln, w, y, M, N, K, x.stride(0), w.stride(0), y.stride(0), eps, GLU=glu, BM=2 if kind == "gemv" else 16,
        BN=bn, BK=bk, num_warps=warps, num_stages=stages, **extra, **_pdl(x.device, kind == "dot"))
    return y


@rms_linear.register_fake
def _(x: torch.Tensor, ln: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x.new_empty(x.shape[0], w.shape[0])


@torch.library.custom_op("voicepipe::rms_glu", mutates_args=())
def rms_glu(x: torch.Tensor, ln: torch.Tensor, wgu: torch.Tensor, eps: float) -> torch.Tensor:
    """silu(gate) * up of F.linear(rms_norm(x) * ln, wgu), wgu = [gate; up] (fused for up to `DOT_ROWS` rows)."""
    M, K = x.shape
    N = wgu.shape[0] // 2
    if not _use(x, K):
        g, u = F.linear(_ref_rms(x, ln, eps), wgu).chunk(2, -1)
        return F.silu(g) * u
    return _launch_rms(x, ln, wgu, N, eps, True)


@rms_glu.register_fake
def _(x: torch.Tensor, ln: torch.Tensor, wgu: torch.Tensor, eps: float) -> torch.Tensor:
    return x.new_empty(x.shape[0], wgu.shape[0] // 2)


_COUNTERS: dict[torch.device, torch.Tensor] = {}  # per device: the split-K tiles' arrival counters, kept at zero


_N_COUNTERS = 4096  # output tiles a split-K kernel may have (one arrival counter each)


def _split_counters(device: torch.device, split: int, N: int, K: int, bn: int, bk: int) -> torch.Tensor | None:
    """The arrival counters for a split-K launch over N columns in tiles of `bn`, K in blocks of `bk`; None where
    the split cannot run (split 1, K not a multiple of split * bk, too many tiles, or inside a first capture)."""
    if split <= 1 or K % (split * bk) or _cdiv(N, bn) > _N_COUNTERS:
        return None
    return _counters(device)


def _counters(device: torch.device) -> torch.Tensor | None:
    """The split-K counters of `device` (allocated on first use outside a CUDA-graph capture; None inside one, where
    an allocation would belong to the graph's pool). Ops on one device share them: their kernels run one at a time
    (one stream); each kernel leaves them at zero."""
    c = _COUNTERS.get(device)
    if c is None and not (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        c = _COUNTERS[device] = torch.zeros(_N_COUNTERS, dtype=torch.int32, device=device)
    return c


@torch.library.custom_op("voicepipe::linear_residual", mutates_args=())
def linear_residual(x: torch.Tensor, w: torch.Tensor, r: torch.Tensor, split: int = 1) -> torch.Tensor:
    """r + F.linear(x, w) for x [b, K], r [b, N] (fused for up to `DOT_ROWS` rows). `split`: above `GEMV_ROWS` rows,
    K split over this many programs per output tile (deterministic: partials added in split order)."""
    M, K = x.shape
    if not _use(x, K):
        return r + F.linear(x, w)
    kind, bn, bk, warps, stages = _config("linear_residual", w.shape[0], K, M)
    y = torch.empty_like(r)
    x, r = x.contiguous(), r.contiguous()
    if kind == "dot":
        N = w.shape[0]
        cnt = _split_counters(x.device, split, N, K, bn, bk)
        split = split if cnt is not None else 1
        ws = torch.empty(split, 16, N, device=x.device, dtype=torch.float32) if split > 1 else y
        _kernels()[4][(_cdiv(N, bn), split)](x, w, r, y, ws, y if cnt is None else cnt, M, N, K, x.stride(0),
                                             w.stride(0), r.stride(0), y.stride(0), BM=16, BN=bn, BK=bk,
                                             num_warps=warps, num_stages=stages, DOT_F32=_interpreted(),
                                             SPLIT=split, ALIGN=SPLIT_ALIGN and split > 1, **_pdl(x.device))
        return y
    _kernels()[1][(_cdiv(w.shape[0], bn),)](x, w, r, y, M, w.shape[0], K, x.stride(0), w.stride(0), r.stride(0),
                                             y.stride(0), BM=2, BN=bn, BK=bk, num_warps=warps, num_stages=stages,
                                             KC=K if GEMV_PRELOAD and K <= 4 * bk else 0, **_pdl(x.device))
    return y


@linear_residual.register_fake
def _(x: torch.Tensor, w: torch.Tensor, r: torch.Tensor, split: int = 1) -> torch.Tensor:
    return torch.empty_like(r)


def _ref_attn(qkv: torch.Tensor, qk_w: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor,
              kc: torch.Tensor, vc: torch.Tensor, eps: float, nh: int, kvh: int) -> torch.Tensor:  # fmt: skip
    """kernels.predictor_next's attention, unfused: qkv [b, (nh+2kvh)*hd] -> o [b, nh*hd]; writes kc/vc at pos."""
    from voicepipe.serve.engine.kernels import rope

    b, hd = qkv.shape[0], kc.shape[-1]
    x = qkv.view(b, 1, nh + 2 * kvh, hd)
    qk = rope(_ref_rms(x[:, :, : nh + kvh], qk_w, eps), cos, sin)
    q, k, v = qk[:, :, :nh].transpose(1, 2), qk[:, :, nh:].transpose(1, 2), x[:, :, nh + kvh :].transpose(1, 2)
    kc[:b].index_copy_(2, pos, k)
    vc[:b].index_copy_(2, pos, v)
    mask = (torch.arange(kc.shape[2], device=kc.device) <= pos)[None]
    o = F.scaled_dot_product_attention(q.reshape(b, kvh, -1, hd), kc[:b], vc[:b], attn_mask=mask)
    return o.reshape(b, -1)


@torch.library.custom_op("voicepipe::attn_decode", mutates_args=("kc", "vc"))
def attn_decode(qkv: torch.Tensor, qk_w: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor,
                kc: torch.Tensor, vc: torch.Tensor, eps: float, nh: int, kvh: int) -> torch.Tensor:  # fmt: skip
    """The predictor's attention for one new token per row: q/k head norms (qk_w [nh+kvh, hd]), RoPE (cos and
    pre-signed sin of position `pos`, a 1-element tensor), K/V written into kc/vc [S, kvh, L, hd] at `pos`, and
    attention over positions 0..pos. qkv [b, (nh + 2 kvh) hd] -> [b, nh hd]. Fused on CUDA (any b). With
    `ATTN_PRELOAD`, pos, cos, sin and the cache below pos must not be written by the kernel just before (the
    engine's are per-step constants and earlier steps' cache rows)."""
    b, hd, L = qkv.shape[0], kc.shape[-1], kc.shape[2]
    if not (qkv.dtype == torch.bfloat16 and available(qkv.device) and L & (L - 1) == 0 and hd & (hd - 1) == 0
            and kc.stride(-1) == 1):
        return _ref_attn(qkv, qk_w, cos, sin, pos, kc, vc, eps, nh, kvh)
    o = torch.empty(b, nh * hd, device=qkv.device, dtype=qkv.dtype)
    qkv = qkv.contiguous()
    _kernels()[2][(b, kvh)](qkv, qk_w.contiguous(), cos.reshape(-1), sin.reshape(-1), pos, kc, vc, o, qkv.stride(0),
                            kc.stride(0), kc.stride(1), kc.stride(2), o.stride(0), eps, 1.0 / math.sqrt(hd),
                            NH=nh, KVH=kvh, HD=hd, L=L, num_warps=_attn_warps(b), num_stages=1,
                            PRE=ATTN_PRELOAD and all(t.is_contiguous() for t in (qk_w, cos, sin)),  # no copy kernels
                            **_pdl(qkv.device))
    return o


def rows_attn_split(rows: int) -> int:
    """How many runs `attn_decode_rows` splits each (row, query head)'s cache walk into at `rows` rows
    (`ROWS_ATTN_SPLIT`: a table, or one split for every size)."""
    if isinstance(ROWS_ATTN_SPLIT, int):
        return ROWS_ATTN_SPLIT
    return next((int(s) for r, s in ROWS_ATTN_SPLIT if rows <= r), 1)


def _attn_warps(rows: int) -> int:
    return ATTN_WARPS_FEW if ATTN_WARPS_FEW is not None and rows <= GEMV_ROWS else ATTN_WARPS


@attn_decode.register_fake
def _(qkv: torch.Tensor, qk_w: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor,
      kc: torch.Tensor, vc: torch.Tensor, eps: float, nh: int, kvh: int) -> torch.Tensor:  # fmt: skip
    return qkv.new_empty(qkv.shape[0], nh * kc.shape[-1])


def _ref_attn_rows(qkv: torch.Tensor, qk_w: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor,
                   kc: torch.Tensor, vc: torch.Tensor, L: int, eps: float, nh: int, kvh: int) -> torch.Tensor:
    """kernels.talker_layer's attention, unfused: qkv [b, (nh+2kvh)*hd], cos / sin [b, hd] and pos [b] per row ->
    o [b, nh*hd]; writes kc/vc at each row's pos; attends over positions 0..pos of the first L."""
    from voicepipe.serve.engine.kernels import rope

    b, hd = qkv.shape[0], kc.shape[-1]
    x = qkv.view(b, 1, nh + 2 * kvh, hd)
    qk = rope(_ref_rms(x[:, :, : nh + kvh], qk_w, eps), cos.view(b, 1, 1, hd), sin.view(b, 1, 1, hd))
    q, k, v = qk[:, :, :nh].transpose(1, 2), qk[:, :, nh:].transpose(1, 2), x[:, :, nh + kvh :].transpose(1, 2)
    bidx = torch.arange(b, device=qkv.device)
    kc[bidx, :, pos] = k[:, :, 0]
    vc[bidx, :, pos] = v[:, :, 0]
    mask = (torch.arange(L, device=kc.device)[None] <= pos[:, None]).view(b, 1, 1, L)
    o = F.scaled_dot_product_attention(q.reshape(b, kvh, -1, hd), kc[:b, :, :L], vc[:b, :, :L], attn_mask=mask)
    return o.reshape(b, -1)


@torch.library.custom_op("voicepipe::attn_decode_rows", mutates_args=("kc", "vc"))
def attn_decode_rows(qkv: torch.Tensor, qk_w: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor,
                     kc: torch.Tensor, vc: torch.Tensor, L: int, eps: float, nh: int, kvh: int) -> torch.Tensor:
    """The talker's attention for one new token per row, each row at its own position: q/k head norms, RoPE
    (cos / pre-signed sin [b, hd] of each row's position pos [b]), K/V written into kc/vc [S, kvh, Lmax, hd] at
    pos, attention over positions 0..pos (pos < L, the length bucket). One kernel on CUDA: a program per (row,
    query head) walks the cache in blocks of `ROWS_ATTN_BLOCK` positions."""
    b, hd = qkv.shape[0], kc.shape[-1]
    if not (qkv.dtype == torch.bfloat16 and available(qkv.device) and hd & (hd - 1) == 0 and kc.stride(-1) == 1):
        return _ref_attn_rows(qkv, qk_w, cos, sin, pos, kc, vc, L, eps, nh, kvh)
    o = torch.empty(b, nh * hd, device=qkv.device, dtype=qkv.dtype)
    qkv, cos, sin = qkv.contiguous(), cos.reshape(b, hd).contiguous(), sin.reshape(b, hd).contiguous()
    nb = _cdiv(L, ROWS_ATTN_BLOCK)
    split = max(1, min(rows_attn_split(b), nb))
    cnt = _counters(qkv.device) if split > 1 and b * nh <= _N_COUNTERS else None
    extra: dict = {}
    if cnt is not None:
        extra = dict(ws_ptr=torch.empty(b * nh * split, hd + 2, device=qkv.device, dtype=torch.float32),
                     cnt_ptr=cnt, SPLIT=split)
    _kernels()[5][(b, nh, split if cnt is not None else 1)](
        qkv, qk_w.contiguous(), cos, sin, pos, kc, vc, o, qkv.stride(0), cos.stride(0), kc.stride(0), kc.stride(1),
        kc.stride(2), o.stride(0), eps, 1.0 / math.sqrt(hd), NH=nh, KVH=kvh, HD=hd, BL=ROWS_ATTN_BLOCK, NB=nb,
        num_warps=ROWS_ATTN_WARPS, num_stages=ROWS_ATTN_STAGES, **extra, **_pdl(qkv.device))
    return o


@attn_decode_rows.register_fake
def _(qkv: torch.Tensor, qk_w: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor,
      kc: torch.Tensor, vc: torch.Tensor, L: int, eps: float, nh: int, kvh: int) -> torch.Tensor:  # fmt: skip
    return qkv.new_empty(qkv.shape[0], nh * kc.shape[-1])


def _ref_sample(logits: torch.Tensor, temp: torch.Tensor, greedy: torch.Tensor, expo: torch.Tensor) -> torch.Tensor:
    """kernels.sample's math with its exponential draws given: top-k of logits / temp, k = expo.shape[-1]."""
    best = logits.argmax(-1)
    vals, idx = (logits / temp.clamp_min(1e-5)).topk(expo.shape[-1], dim=-1)
    pick = (vals.softmax(-1) / expo).argmax(-1, keepdim=True)
    return torch.where(greedy, best, idx.gather(-1, pick).squeeze(-1))


@torch.library.custom_op("voicepipe::sample_topk", mutates_args=())
def sample_topk(logits: torch.Tensor, temp: torch.Tensor, greedy: torch.Tensor, expo: torch.Tensor
                ) -> torch.Tensor:  # fmt: skip
    """Top-k sampling (k = expo.shape[-1]) at per-row temperature temp [b, 1], greedy rows: argmax; `expo` [b, k]
    holds the exponential draws of the race (`kernels.sample` draws them exactly as before, so the codes for a seed
    are the same). One kernel per call on CUDA: the top k are found by a threshold search, not a sort."""
    if not _sample_fused(logits, expo):
        return _ref_sample(logits, temp, greedy, expo)
    return _launch_sample(logits, temp, greedy, expo)


def _sample_fused(logits: torch.Tensor, expo: torch.Tensor) -> bool:
    return (available(logits.device) and logits.dtype in (torch.float32, torch.bfloat16) and logits.shape[-1] <= 4096
            and expo.shape[-1] <= 128)


def _launch_sample(logits: torch.Tensor, temp: torch.Tensor, greedy: torch.Tensor, expo: torch.Tensor,
                   embed_w: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    b, V = logits.shape
    k = expo.shape[-1]
    kp = 1 << max(0, (k - 1).bit_length())
    out = torch.empty(b, dtype=torch.long, device=logits.device)
    scr = torch.empty(b, kp, dtype=torch.int32, device=logits.device)
    logits, expo = logits.contiguous(), expo.contiguous()
    if embed_w is None:
        emb_args, emb = (logits, logits, 0, 0, 0), None
        meta = {}
    else:
        E = embed_w.shape[1]
        emb = torch.empty(b, E, device=logits.device, dtype=embed_w.dtype)
        emb_args = (embed_w, emb, E, embed_w.stride(0), emb.stride(0))
        meta = {"EMB": True, "EP": 1 << (E - 1).bit_length()}
    _kernels()[3][(b,)](logits, temp, greedy, expo, scr, out, V, k, logits.stride(0), temp.stride(0), expo.stride(0),
                        *emb_args, VP=1 << (V - 1).bit_length(), KP=kp, num_warps=SAMPLE_WARPS, num_stages=1, **meta,
                        KEY16=SAMPLE_KEY16 and logits.dtype == torch.bfloat16, **_pdl(logits.device))
    return out if emb is None else (out, emb)


@sample_topk.register_fake
def _(logits: torch.Tensor, temp: torch.Tensor, greedy: torch.Tensor, expo: torch.Tensor) -> torch.Tensor:
    return logits.new_empty(logits.shape[0], dtype=torch.long)


@torch.library.custom_op("voicepipe::sample_embed", mutates_args=())
def sample_embed(logits: torch.Tensor, temp: torch.Tensor, greedy: torch.Tensor, expo: torch.Tensor,
                 embed_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """`sample_topk` and the picked codes' rows of `embed_w` [V', E] in the same kernel: (codes [b], embeddings
    [b, E]). `logits` may be bf16 (read as fp32: the values `.float()` would give)."""
    if not (_sample_fused(logits, expo) and embed_w.stride(1) == 1):
        code = _ref_sample(logits.float(), temp, greedy, expo)
        return code, F.embedding(code, embed_w)
    return _launch_sample(logits, temp, greedy, expo, embed_w)


@sample_embed.register_fake
def _(logits: torch.Tensor, temp: torch.Tensor, greedy: torch.Tensor, expo: torch.Tensor, embed_w: torch.Tensor
      ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    return logits.new_empty(logits.shape[0], dtype=torch.long), embed_w.new_empty(logits.shape[0], embed_w.shape[1])
