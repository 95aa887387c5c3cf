"""Small-M matmul for the frame step's linear layers: y = x @ w.T (+ b), bf16 weights [N, K], 1..64 rows.

A frame step multiplies 1-64 rows by ~5 GB of weights (the talker's 2048-wide layers once, the code predictor's
1024-wide ones 15 times), so its matmuls are weight reads; cuBLAS's GEMV kernels reach about a third of HBM
bandwidth on these shapes. Two Triton kernels, picked by the number of rows:

- `_gemv` (M <= 8): no tensor cores; each program owns BN weight rows and streams their K columns with wide loads,
  accumulating BM x BN dot products in fp32 (the rows of x are few, so x stays in registers/L1);
- `_skinny` (M > 8): `tl.dot` over [BM, BK] x [BK, BN] tiles, one pass over the weights per BM rows.

Both accumulate in fp32 and round once, as cuBLAS does; summation order differs, so results agree with F.linear
to bf16 rounding, not bit for bit. `launch` runs either (benchmarks/gemv.py times both against cuBLAS). The engine
uses the custom op `voicepipe::linear` (opaque to torch.compile, capturable in CUDA graphs), which runs `_gemv` for at
most `MAX_ROWS` rows, the only case where it beat cuBLAS on an H200 (1.2-2.2x on the predictor's <= 3 M-element
matrices), and F.linear otherwise: above that, off CUDA, without Triton, or for shapes the kernel does not cover.
Triton is imported on first use only (the CPU test machines have none).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def available(device: torch.device) -> bool:
    """Whether the Triton kernels can run on `device` (CUDA with Triton importable)."""
    if device.type != "cuda":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def _gemv(x_ptr, w_ptr, b_ptr, y_ptr, M, N, K, sxm, swn, sym,
              HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):  # fmt: skip
        pid = tl.program_id(0)
        offs_n = pid * BN + tl.arange(0, BN)
        offs_m = tl.arange(0, BM)
        offs_k = tl.arange(0, BK)
        n_ok = offs_n < N
        m_ok = offs_m < M
        acc = tl.zeros((BM, BN, BK), dtype=tl.float32)
        w_ptrs = w_ptr + offs_n[:, None] * swn + offs_k[None, :]
        x_ptrs = x_ptr + offs_m[:, None] * sxm + offs_k[None, :]
        for _ in range(0, K, BK):  # K % BK == 0 (checked by the caller)
            w = tl.load(w_ptrs, mask=n_ok[:, None], other=0.0, eviction_policy="evict_first").to(tl.float32)
            x = tl.load(x_ptrs, mask=m_ok[:, None], other=0.0).to(tl.float32)
            acc += x[:, None, :] * w[None, :, :]
            w_ptrs += BK
            x_ptrs += BK
        out = tl.sum(acc, axis=2)
        if HAS_BIAS:
            out += tl.load(b_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        y_ptrs = y_ptr + offs_m[:, None] * sym + offs_n[None, :]
        tl.store(y_ptrs, out.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])

    @triton.jit
    def _skinny(x_ptr, w_ptr, b_ptr, y_ptr, M, N, K, sxm, swn, sym,
                HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):  # fmt: skip
        pid_n = tl.program_id(0)
        pid_m = tl.program_id(1)
        offs_n = pid_n * BN + tl.arange(0, BN)
        offs_m = pid_m * BM + tl.arange(0, BM)
        offs_k = tl.arange(0, BK)
        n_ok = offs_n < N
        m_ok = offs_m < M
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        w_ptrs = w_ptr + offs_n[:, None] * swn + offs_k[None, :]
        x_ptrs = x_ptr + offs_m[:, None] * sxm + offs_k[None, :]
        for _ in range(0, K, BK):
            w = tl.load(w_ptrs, mask=n_ok[:, None], other=0.0, eviction_policy="evict_first")
            x = tl.load(x_ptrs, mask=m_ok[:, None], other=0.0)
            acc = tl.dot(x, tl.trans(w), acc)
            w_ptrs += BK
            x_ptrs += BK
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        y_ptrs = y_ptr + offs_m[:, None] * sym + offs_n[None, :]
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])

    return _gemv, _skinny


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


# rows up to which `voicepipe::linear` runs the Triton GEMV: at 16 and 64 rows cuBLAS was as fast or faster on every
# frame-step shape (benchmarks/gemv.py, H200, 2026-12-03)
MAX_ROWS = 2


def default_config(M: int, N: int, K: int) -> tuple[str, int, int, int, int, int]:
    """(kernel, BM, BN, BK, num_warps, num_stages) for an M x K times K x N product (benchmarks/gemv.py measures
    the alternatives; for 1-2 rows, 8 weight rows x 1,024 columns per program and 8 warps was the fastest on the
    predictor's matrices)."""
    if M <= 2:
        return ("gemv", _next_pow2(M), 8, 1024, 8, 1) if K % 1024 == 0 else ("gemv", _next_pow2(M), 4, 512, 4, 1)
    if M <= 8:
        bm = _next_pow2(M)
        bk = 512 if bm <= 2 else 256 if bm <= 4 else 128
        return "gemv", bm, 8, bk, 4, 1
    bm = 16 if M <= 16 else 32 if M <= 32 else 64
    return "skinny", bm, 32 if bm <= 32 else 64, 128, 4, 4


def supported(x: torch.Tensor, w: torch.Tensor, config: tuple | None = None) -> bool:
    K = w.shape[1]
    bk = (config or default_config(max(1, x.numel() // max(1, K)), w.shape[0], K))[3]
    return (x.is_cuda and w.is_cuda and w.dim() == 2 and w.stride(1) == 1 and x.shape[-1] == K and K % bk == 0
            and x.dtype == w.dtype and x.dtype in (torch.bfloat16, torch.float16))


def launch(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, config: tuple | None = None
           ) -> torch.Tensor:  # fmt: skip
    """y = x @ w.T (+ b) through the Triton kernels (CUDA, `supported` shapes); `config` as `default_config`."""
    K, N = w.shape[1], w.shape[0]
    x2 = x.reshape(-1, K)
    if x2.stride(1) != 1:
        x2 = x2.contiguous()
    M = x2.shape[0]
    y = torch.empty(M, N, device=x.device, dtype=x.dtype)
    if M == 0:
        return y.view(*x.shape[:-1], N)
    kind, bm, bn, bk, warps, stages = config or default_config(M, N, K)
    gemv, skinny = _kernels()
    bias = b if b is not None else w  # unused pointer when HAS_BIAS is false
    args = (x2, w, bias, y, M, N, K, x2.stride(0), w.stride(0), y.stride(0))
    if kind == "gemv":
        gemv[(triton_cdiv(N, bn),)](*args, HAS_BIAS=b is not None, BM=bm, BN=bn, BK=bk, num_warps=warps,
                                    num_stages=stages)
    else:
        skinny[(triton_cdiv(N, bn), triton_cdiv(M, bm))](*args, HAS_BIAS=b is not None, BM=bm, BN=bn, BK=bk,
                                                         num_warps=warps, num_stages=stages)
    return y.view(*x.shape[:-1], N)


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


@torch.library.custom_op("voicepipe::linear", mutates_args=())
def _linear_op(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    if x.shape[:-1].numel() <= MAX_ROWS and supported(x, w):
        return launch(x, w, b)
    return F.linear(x, w, b)


@_linear_op.register_fake
def _(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], w.shape[0])


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear through the custom op on CUDA (the Triton GEMV for up to `MAX_ROWS` rows, chosen when the op runs,
    so one traced graph serves every batch), else F.linear itself."""
    if not x.is_cuda:
        return F.linear(x, w, b)
    return _linear_op(x, w, b)
