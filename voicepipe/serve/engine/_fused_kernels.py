"""Triton source of `fused.py`'s kernels (imported on first use only, by `fused._kernels`: Triton's `@triton.jit`
decides at decoration time whether it runs in the interpreter, and CPU test machines may have no Triton).

`_rms_gemv` / `_rms_dot`: RMSNorm + matmul (+ SiLU·up for gate/up), GEMV form or tensor-core tiles; `_gemv_res` /
`_dot_res`: matmul + residual; `_attn`: the predictor's attention with its cache write; `_sample`: top-k sampling
(+ the code's embedding row); `_attn_rows`: the talker's attention, each row at its own position. What each computes,
and the switches that pick their forms, are `fused.py`'s ops."""

from __future__ import annotations

import triton
import triton.language as tl

try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # an older Triton: the `PDL` branches are never compiled (`fused._has_pdl` is False)
    gdc_launch_dependents = gdc_wait = None

@triton.jit
def _dot_t(a, b, acc, DOT_F32: tl.constexpr):
    # acc + a @ b.T on tensor cores; DOT_F32: the operands as fp32 (the same values): Triton's interpreter multiplies
    # bf16 operands wrongly
    if DOT_F32:
        acc = tl.dot(a.to(tl.float32), tl.trans(b.to(tl.float32)), acc)
    else:
        acc = tl.dot(a, tl.trans(b), acc)
    return acc


@triton.jit
def _head_norm_rope(row, qkw_ptr, hd_idx, d, dr, cos, sin, eps, HD: tl.constexpr):
    # one head of a q/k/v row: its RMS norm (qk_w's row `hd_idx`) and RoPE (pre-signed sin), rounded where the
    # unfused path stores bf16
    x = tl.load(row + hd_idx * HD + d).to(tl.float32)
    xr = tl.load(row + hd_idx * HD + dr).to(tl.float32)
    rs = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / HD + eps)
    w = tl.load(qkw_ptr + hd_idx * HD + d).to(tl.float32)
    wr = tl.load(qkw_ptr + hd_idx * HD + dr).to(tl.float32)
    xn = ((x * rs).to(tl.bfloat16).to(tl.float32) * w).to(tl.bfloat16).to(tl.float32)
    xnr = ((xr * rs).to(tl.bfloat16).to(tl.float32) * wr).to(tl.bfloat16).to(tl.float32)
    return ((xn * cos).to(tl.bfloat16).to(tl.float32) + xnr * sin).to(tl.bfloat16).to(tl.float32)


@triton.jit
def _topk_mask(sc, ok, k, KEY16: tl.constexpr):
    # which of the valid (`ok`) scores are the top k, ties broken by index as topk does: a threshold search (the
    # largest threshold with at least k scores at or above it, halving the range over the floats' order as
    # integers: 33 halvings), no sort. KEY16: the scores are bf16 values (as fp32), whose order is that of their 16
    # high bits: 17 halvings. `_sample`'s and the persistent step's sampler
    bits = sc.to(tl.int32, bitcast=True)
    if KEY16:
        bits = bits >> 16  # (arithmetic: the sign stays; a bf16 value's low 16 bits are zero)
        key = tl.where(bits < 0, bits ^ 0x7FFF, bits).to(tl.int64)  # the floats' order, as integers
    else:
        key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(tl.int64)
    # the largest thr in [lo, hi] with at least k keys >= thr (>= lo: every valid one; > hi: fewer than k)
    lo = tl.min(tl.where(ok, key, 2**31), axis=0)
    hi = tl.max(tl.where(ok, key, -(2**31) - 1), axis=0)
    key = tl.where(ok, key, -(2**31) - 1)
    for _ in range(33 - 16 * KEY16):  # a range of at most 2**32 keys (2**16: KEY16)
        mid = lo + (hi - lo + 1) // 2
        enough = tl.sum((key >= mid).to(tl.int32), axis=0) >= k
        lo = tl.where(enough, mid, lo)
        hi = tl.where(enough, hi, mid - 1)
    above = key > lo
    tie = key == lo
    return above | (tie & (tl.cumsum(tie.to(tl.int32), axis=0) <= k - tl.sum(above.to(tl.int32), axis=0)))


@triton.jit
def _topk_codes(sel, offs, scr_ptr, row, k, KP: tl.constexpr):
    # the selected codes packed into KP slots (through the row's scratch in scr) in code order: slots j, which hold
    # one (jok: j < k), and their codes idx. `_sample`'s and the persistent step's sampler
    slot = tl.cumsum(sel.to(tl.int32), axis=0) - 1
    tl.store(scr_ptr + row * KP + slot, offs, mask=sel)
    tl.debug_barrier()
    j = tl.arange(0, KP)
    jok = j < k
    idx = tl.load(scr_ptr + row * KP + j, mask=jok, other=0)
    return j, jok, idx


@triton.jit
def _race(v, idx, j, jok, ex_ptr, row, s_ex):
    # the exponential race among the top k (scores v of codes idx, slots j, valid jok): the code of the largest
    # p / draw, each paired with its draw (row `row` of ex) by its place in topk's order (descending; equal values
    # by index), as `kernels.sample` pairs them. `_sample`'s and the persistent step's sampler
    ahead = (v[None, :] > v[:, None]) | ((v[None, :] == v[:, None]) & (idx[None, :] < idx[:, None]))
    rank = tl.sum((ahead & jok[None, :]).to(tl.int32), axis=1)
    p = tl.exp(v - tl.max(v, axis=0))
    p = p / tl.sum(p, axis=0)
    e = tl.load(ex_ptr + row * s_ex + rank, mask=jok, other=1.0)
    pick = tl.argmax(tl.where(jok, p / e, -1.0), axis=0)
    return tl.sum(tl.where(j == pick, idx, 0), axis=0)


# PDL (programmatic dependent launch, `PDL`): a kernel loads what no earlier kernel writes (its first weight tile)
# before `gdc_wait` (the kernel before it finished, its writes visible), then lets the next kernel launch
# (`gdc_launch_dependents`): the next kernel's programs are resident and loading while this one runs.
# `.to(tl.bfloat16).to(tl.float32)`: rounded where the unfused path stores a bf16 tensor
@triton.jit
def _rms_gemv(x_ptr, ln_ptr, w_ptr, y_ptr, M, N, K, sxm, swn, sym, eps, GLU: tl.constexpr,
              BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):  # fmt: skip
    # y = rms(x)*ln @ w.T; GLU: w holds [gate; up] (2N rows) and y = silu(gate) * up ([M, N])
    pid = tl.program_id(0)
    offs_n = pid * BN + tl.arange(0, BN)
    offs_m = tl.arange(0, BM)
    offs_k = tl.arange(0, BK)
    n_ok = offs_n < N
    m_ok = offs_m < M
    ss = tl.zeros((BM, BK), dtype=tl.float32)
    for k0 in range(0, K, BK):
        x = tl.load(x_ptr + offs_m[:, None] * sxm + k0 + offs_k[None, :], mask=m_ok[:, None], other=0.0)
        x = x.to(tl.float32)
        ss += x * x
    rstd = 1.0 / tl.sqrt(tl.sum(ss, axis=1) / K + eps)
    acc = tl.zeros((BM, BN, BK), dtype=tl.float32)
    acc_u = tl.zeros((BM, BN, BK), dtype=tl.float32)
    for k0 in range(0, K, BK):
        x = tl.load(x_ptr + offs_m[:, None] * sxm + k0 + offs_k[None, :], mask=m_ok[:, None], other=0.0)
        g = tl.load(ln_ptr + k0 + offs_k).to(tl.float32)
        xn = (x.to(tl.float32) * rstd[:, None] * g[None, :]).to(tl.bfloat16).to(tl.float32)
        w = tl.load(w_ptr + offs_n[:, None] * swn + k0 + offs_k[None, :], mask=n_ok[:, None], other=0.0,
                    eviction_policy="evict_first").to(tl.float32)
        acc += xn[:, None, :] * w[None, :, :]
        if GLU:
            u = tl.load(w_ptr + (offs_n[:, None] + N) * swn + k0 + offs_k[None, :], mask=n_ok[:, None],
                        other=0.0, eviction_policy="evict_first").to(tl.float32)
            acc_u += xn[:, None, :] * u[None, :, :]
    out = (tl.sum(acc, axis=2)).to(tl.bfloat16).to(tl.float32)
    if GLU:
        up = (tl.sum(acc_u, axis=2)).to(tl.bfloat16).to(tl.float32)
        out = (out / (1.0 + tl.exp(-out))).to(tl.bfloat16).to(tl.float32) * up
    tl.store(y_ptr + offs_m[:, None] * sym + offs_n[None, :], out.to(y_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _rms_dot(x_ptr, ln_ptr, w_ptr, y_ptr, M, N, K, sxm, swn, sym, eps, GLU: tl.constexpr,
             BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, DOT_F32: tl.constexpr,
             PDL: tl.constexpr = False, ws_ptr=None, cnt_ptr=None, SPLIT: tl.constexpr = 1,
             KC: tl.constexpr = 0, PRE: tl.constexpr = 1):  # fmt: skip
    # _rms_gemv on tensor cores: [BM, BK] x [BK, BN] tiles (rows padded to BM = 16), pipelined over K.
    # DOT_F32: the operands as fp32 (`_dot_t`).
    # SPLIT > 1: K split over program_id(1) as in _dot_res (each program normalizes with the whole row's rms;
    # fp32 partials in ws [SPLIT, 2, BM, N], the tile's last split adds them in split order and stores).
    # `RMS_PRELOAD`: KC (= K at compile time) unrolls the rms pass, so its x tiles are asked for at once, and
    # PRE = 2 loads the program's second weight tile before the wait too (else it waits behind the rms pass)
    pid = tl.program_id(0)
    offs_n = pid * BN + tl.arange(0, BN)
    offs_m = tl.arange(0, BM)
    offs_k = tl.arange(0, BK)
    n_ok = offs_n < N
    m_ok = offs_m < M
    ks = 0
    kper = K
    if SPLIT > 1:
        ks = tl.program_id(1)
        kper = K // SPLIT
    k_lo = ks * kper
    # the first K tile of the weights before the wait (PDL), the rest in the loop
    w0 = tl.load(w_ptr + offs_n[:, None] * swn + k_lo + offs_k[None, :], mask=n_ok[:, None], other=0.0,
                 eviction_policy="evict_first")
    u0 = w0
    if GLU:
        u0 = tl.load(w_ptr + (offs_n[:, None] + N) * swn + k_lo + offs_k[None, :], mask=n_ok[:, None],
                     other=0.0, eviction_policy="evict_first")
    w1 = w0
    u1 = u0
    if PRE > 1:
        w1 = tl.load(w_ptr + offs_n[:, None] * swn + k_lo + BK + offs_k[None, :], mask=n_ok[:, None],
                     other=0.0, eviction_policy="evict_first")
        if GLU:
            u1 = tl.load(w_ptr + (offs_n[:, None] + N) * swn + k_lo + BK + offs_k[None, :],
                         mask=n_ok[:, None], other=0.0, eviction_policy="evict_first")
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    ss = tl.zeros((BM, BK), dtype=tl.float32)
    if KC > 0:
        for k0 in tl.static_range(0, KC, BK):
            x = tl.load(x_ptr + offs_m[:, None] * sxm + k0 + offs_k[None, :], mask=m_ok[:, None], other=0.0)
            x = x.to(tl.float32)
            ss += x * x
    else:
        for k0 in range(0, K, BK):
            x = tl.load(x_ptr + offs_m[:, None] * sxm + k0 + offs_k[None, :], mask=m_ok[:, None], other=0.0)
            x = x.to(tl.float32)
            ss += x * x
    rstd = 1.0 / tl.sqrt(tl.sum(ss, axis=1) / K + eps)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    acc_u = tl.zeros((BM, BN), dtype=tl.float32)
    x = tl.load(x_ptr + offs_m[:, None] * sxm + k_lo + offs_k[None, :], mask=m_ok[:, None], other=0.0)
    g = tl.load(ln_ptr + k_lo + offs_k).to(tl.float32)
    xn = (x.to(tl.float32) * rstd[:, None] * g[None, :]).to(tl.bfloat16)
    acc = _dot_t(xn, w0, acc, DOT_F32)
    if GLU:
        acc_u = _dot_t(xn, u0, acc_u, DOT_F32)
    if PRE > 1:
        x = tl.load(x_ptr + offs_m[:, None] * sxm + k_lo + BK + offs_k[None, :], mask=m_ok[:, None], other=0.0)
        g = tl.load(ln_ptr + k_lo + BK + offs_k).to(tl.float32)
        xn = (x.to(tl.float32) * rstd[:, None] * g[None, :]).to(tl.bfloat16)
        acc = _dot_t(xn, w1, acc, DOT_F32)
        if GLU:
            acc_u = _dot_t(xn, u1, acc_u, DOT_F32)
    for k0 in range(k_lo + PRE * BK, k_lo + kper, BK):
        x = tl.load(x_ptr + offs_m[:, None] * sxm + k0 + offs_k[None, :], mask=m_ok[:, None], other=0.0)
        g = tl.load(ln_ptr + k0 + offs_k).to(tl.float32)
        xn = (x.to(tl.float32) * rstd[:, None] * g[None, :]).to(tl.bfloat16)
        w = tl.load(w_ptr + offs_n[:, None] * swn + k0 + offs_k[None, :], mask=n_ok[:, None], other=0.0,
                    eviction_policy="evict_first")
        acc = _dot_t(xn, w, acc, DOT_F32)
        if GLU:
            u = tl.load(w_ptr + (offs_n[:, None] + N) * swn + k0 + offs_k[None, :], mask=n_ok[:, None],
                        other=0.0, eviction_policy="evict_first")
            acc_u = _dot_t(xn, u, acc_u, DOT_F32)
    last = True
    if SPLIT > 1:
        part = offs_m[:, None] * N + offs_n[None, :]
        tl.store(ws_ptr + (2 * ks) * BM * N + part, acc, mask=n_ok[None, :])
        if GLU:
            tl.store(ws_ptr + (2 * ks + 1) * BM * N + part, acc_u, mask=n_ok[None, :])
        tl.debug_barrier()  # every thread's partial stored before the counter moves
        last = tl.atomic_add(cnt_ptr + pid, 1, sem="acq_rel") == SPLIT - 1
        if last:
            acc = tl.zeros((BM, BN), dtype=tl.float32)
            acc_u = tl.zeros((BM, BN), dtype=tl.float32)
            for j in tl.static_range(SPLIT):
                acc += tl.load(ws_ptr + (2 * j) * BM * N + part, mask=n_ok[None, :], other=0.0,
                               cache_modifier=".cg")
                if GLU:
                    acc_u += tl.load(ws_ptr + (2 * j + 1) * BM * N + part, mask=n_ok[None, :], other=0.0,
                                     cache_modifier=".cg")
            tl.store(cnt_ptr + pid, 0)
    if last:
        out = acc.to(tl.bfloat16).to(tl.float32)
        if GLU:
            up = acc_u.to(tl.bfloat16).to(tl.float32)
            out = (out / (1.0 + tl.exp(-out))).to(tl.bfloat16).to(tl.float32) * up
        tl.store(y_ptr + offs_m[:, None] * sym + offs_n[None, :], out.to(y_ptr.dtype.element_ty),
                 mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _gemv_res(x_ptr, w_ptr, r_ptr, y_ptr, M, N, K, sxm, swn, srm, sym,
              BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PDL: tl.constexpr = False,
              KC: tl.constexpr = 0):  # fmt: skip
    # y = r + x @ w.T. KC (`GEMV_PRELOAD`; K at compile time, at most 4 * BK): all of the program's weight
    # tiles are loaded before the wait, kept in bf16; otherwise (KC 0) the first tile, then a K loop, where each
    # tile's load waits behind the previous tile's products (their x goes through shared memory, with barriers)
    pid = tl.program_id(0)
    offs_n = pid * BN + tl.arange(0, BN)
    offs_m = tl.arange(0, BM)
    offs_k = tl.arange(0, BK)
    n_ok = offs_n < N
    m_ok = offs_m < M
    if KC > 0:
        wp = w_ptr + offs_n[:, None] * swn + offs_k[None, :]
        xp = x_ptr + offs_m[:, None] * sxm + offs_k[None, :]
        w0 = tl.load(wp, mask=n_ok[:, None], other=0.0, eviction_policy="evict_first")
        w1 = w0
        w2 = w0
        w3 = w0
        if KC > BK:
            w1 = tl.load(wp + BK, mask=n_ok[:, None], other=0.0, eviction_policy="evict_first")
        if KC > 2 * BK:
            w2 = tl.load(wp + 2 * BK, mask=n_ok[:, None], other=0.0, eviction_policy="evict_first")
        if KC > 3 * BK:
            w3 = tl.load(wp + 3 * BK, mask=n_ok[:, None], other=0.0, eviction_policy="evict_first")
        if PDL:
            gdc_wait()
            gdc_launch_dependents()
        x0 = tl.load(xp, mask=m_ok[:, None], other=0.0)  # then x's tiles, all before the first product
        x1 = x0
        x2 = x0
        x3 = x0
        if KC > BK:
            x1 = tl.load(xp + BK, mask=m_ok[:, None], other=0.0)
        if KC > 2 * BK:
            x2 = tl.load(xp + 2 * BK, mask=m_ok[:, None], other=0.0)
        if KC > 3 * BK:
            x3 = tl.load(xp + 3 * BK, mask=m_ok[:, None], other=0.0)
        acc = x0.to(tl.float32)[:, None, :] * w0.to(tl.float32)[None, :, :]
        if KC > BK:
            acc += x1.to(tl.float32)[:, None, :] * w1.to(tl.float32)[None, :, :]
        if KC > 2 * BK:
            acc += x2.to(tl.float32)[:, None, :] * w2.to(tl.float32)[None, :, :]
        if KC > 3 * BK:
            acc += x3.to(tl.float32)[:, None, :] * w3.to(tl.float32)[None, :, :]
    else:
        w0 = tl.load(w_ptr + offs_n[:, None] * swn + offs_k[None, :], mask=n_ok[:, None], other=0.0,
                     eviction_policy="evict_first").to(tl.float32)
        if PDL:
            gdc_wait()
            gdc_launch_dependents()
        x = tl.load(x_ptr + offs_m[:, None] * sxm + offs_k[None, :], mask=m_ok[:, None], other=0.0)
        acc = x.to(tl.float32)[:, None, :] * w0[None, :, :]
        for k0 in range(BK, K, BK):
            w = tl.load(w_ptr + offs_n[:, None] * swn + k0 + offs_k[None, :], mask=n_ok[:, None], other=0.0,
                        eviction_policy="evict_first").to(tl.float32)
            x = tl.load(x_ptr + offs_m[:, None] * sxm + k0 + offs_k[None, :], mask=m_ok[:, None], other=0.0)
            acc += x.to(tl.float32)[:, None, :] * w[None, :, :]
    ok = m_ok[:, None] & n_ok[None, :]
    r = tl.load(r_ptr + offs_m[:, None] * srm + offs_n[None, :], mask=ok, other=0.0).to(tl.float32)
    out = (tl.sum(acc, axis=2)).to(tl.bfloat16).to(tl.float32) + r
    tl.store(y_ptr + offs_m[:, None] * sym + offs_n[None, :], out.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _dot_res(x_ptr, w_ptr, r_ptr, y_ptr, ws_ptr, cnt_ptr, M, N, K, sxm, swn, srm, sym, BM: tl.constexpr,
             BN: tl.constexpr, BK: tl.constexpr, DOT_F32: tl.constexpr, SPLIT: tl.constexpr = 1,
             PDL: tl.constexpr = False, ALIGN: tl.constexpr = False):  # fmt: skip
    # _gemv_res on tensor cores (3-16 rows): [BM, BK] x [BK, BN] tiles, rows padded to BM = 16.
    # ALIGN (`SPLIT_ALIGN`): a split's K range starts at a multiple of BK (the launcher checks it), which Triton
    # cannot infer from K // SPLIT: its loads are then 128-bit, not 64-bit, at split 4
    # SPLIT > 1: split-K over program_id(1) (more programs on the few output columns: N = 1024 at BN 32 is 32
    # programs); each split stores its fp32 partial in ws [SPLIT, BM, N], and the tile's last split to arrive
    # (counter cnt[tile], left at zero again) adds them in split order, so the result is deterministic
    pid = tl.program_id(0)
    ks = tl.program_id(1)
    offs_n = pid * BN + tl.arange(0, BN)
    offs_m = tl.arange(0, BM)
    offs_k = tl.arange(0, BK)
    n_ok = offs_n < N
    m_ok = offs_m < M
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    kper = K // SPLIT
    if ALIGN:
        kper = tl.multiple_of(kper, BK)
    w0 = tl.load(w_ptr + offs_n[:, None] * swn + ks * kper + offs_k[None, :], mask=n_ok[:, None], other=0.0,
                 eviction_policy="evict_first")
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    x = tl.load(x_ptr + offs_m[:, None] * sxm + ks * kper + offs_k[None, :], mask=m_ok[:, None], other=0.0)
    acc = _dot_t(x, w0, acc, DOT_F32)
    for k0 in range(ks * kper + BK, ks * kper + kper, BK):
        x = tl.load(x_ptr + offs_m[:, None] * sxm + k0 + offs_k[None, :], mask=m_ok[:, None], other=0.0)
        w = tl.load(w_ptr + offs_n[:, None] * swn + k0 + offs_k[None, :], mask=n_ok[:, None], other=0.0,
                    eviction_policy="evict_first")
        acc = _dot_t(x, w, acc, DOT_F32)
    ok = m_ok[:, None] & n_ok[None, :]
    if SPLIT > 1:
        part = offs_m[:, None] * N + offs_n[None, :]
        tl.store(ws_ptr + ks * BM * N + part, acc, mask=n_ok[None, :])
        tl.debug_barrier()  # every thread's partial stored before the counter moves
        if tl.atomic_add(cnt_ptr + pid, 1, sem="acq_rel") == SPLIT - 1:
            acc = tl.zeros((BM, BN), dtype=tl.float32)
            for j in tl.static_range(SPLIT):
                acc += tl.load(ws_ptr + j * BM * N + part, mask=n_ok[None, :], other=0.0, cache_modifier=".cg")
            r = tl.load(r_ptr + offs_m[:, None] * srm + offs_n[None, :], mask=ok, other=0.0).to(tl.float32)
            out = acc.to(tl.bfloat16).to(tl.float32) + r
            tl.store(y_ptr + offs_m[:, None] * sym + offs_n[None, :], out.to(y_ptr.dtype.element_ty), mask=ok)
            tl.store(cnt_ptr + pid, 0)
    else:
        r = tl.load(r_ptr + offs_m[:, None] * srm + offs_n[None, :], mask=ok, other=0.0).to(tl.float32)
        out = acc.to(tl.bfloat16).to(tl.float32) + r
        tl.store(y_ptr + offs_m[:, None] * sym + offs_n[None, :], out.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _attn(qkv_ptr, qkw_ptr, cos_ptr, sin_ptr, pos_ptr, kc_ptr, vc_ptr, o_ptr, s_qkv, s_kb, s_kh, s_kl, s_o,
          eps, scale, NH: tl.constexpr, KVH: tl.constexpr, HD: tl.constexpr, L: tl.constexpr,
          PDL: tl.constexpr = False, PRE: tl.constexpr = False):  # fmt: skip
    # one (row, KV head): q/k head norms, RoPE, cache write at pos, attention of its NH // KVH query heads.
    # PRE (`ATTN_PRELOAD`): the position, RoPE rows and the cache below pos are loaded before the wait (no kernel
    # just before writes them: the cache below pos was written by earlier steps' attention, which had finished
    # when the kernel before this one passed its own wait), only the q/k/v row after it
    bi = tl.program_id(0)
    h = tl.program_id(1)
    d = tl.arange(0, HD)
    dr = (d + HD // 2) % HD  # rotate_half as a roll: x.roll(HD/2) at d is x[(d + HD/2) % HD]
    if PDL:
        if not PRE:
            gdc_wait()
            gdc_launch_dependents()
    pos = tl.load(pos_ptr)
    cos = tl.load(cos_ptr + d).to(tl.float32)
    sin = tl.load(sin_ptr + d).to(tl.float32)  # pre-signed (kernels.signed_sin)
    if PRE:
        cache = bi * s_kb + h * s_kh
        j = tl.arange(0, L)
        before = (j < pos)[:, None]
        kk = tl.load(kc_ptr + cache + j[:, None] * s_kl + d[None, :], mask=before, other=0.0).to(tl.float32)
        vv = tl.load(vc_ptr + cache + j[:, None] * s_kl + d[None, :], mask=before, other=0.0).to(tl.float32)
        if PDL:
            gdc_wait()
            gdc_launch_dependents()
    row = qkv_ptr + bi * s_qkv
    kh = NH + h
    k_new = _head_norm_rope(row, qkw_ptr, kh, d, dr, cos, sin, eps, HD)
    v_new = tl.load(row + (NH + KVH + h) * HD + d).to(tl.float32)
    if not PRE:
        cache = bi * s_kb + h * s_kh
    tl.store(kc_ptr + cache + pos * s_kl + d, k_new.to(kc_ptr.dtype.element_ty))
    tl.store(vc_ptr + cache + pos * s_kl + d, v_new.to(vc_ptr.dtype.element_ty))
    if not PRE:
        j = tl.arange(0, L)
        before = (j < pos)[:, None]
        kk = tl.load(kc_ptr + cache + j[:, None] * s_kl + d[None, :], mask=before, other=0.0).to(tl.float32)
        vv = tl.load(vc_ptr + cache + j[:, None] * s_kl + d[None, :], mask=before, other=0.0).to(tl.float32)
    here = (j == pos)[:, None]
    kk = tl.where(here, k_new[None, :], kk)
    vv = tl.where(here, v_new[None, :], vv)
    for g in tl.static_range(NH // KVH):
        qh = h * (NH // KVH) + g
        qq = _head_norm_rope(row, qkw_ptr, qh, d, dr, cos, sin, eps, HD)
        s = tl.sum(qq[None, :] * kk, axis=1) * scale
        s = tl.where(j <= pos, s, float("-inf"))
        p = tl.exp(s - tl.max(s, axis=0))
        p = p / tl.sum(p, axis=0)
        o = tl.sum(p[:, None] * vv, axis=0)
        tl.store(o_ptr + bi * s_o + qh * HD + d, o.to(o_ptr.dtype.element_ty))


@triton.jit
def _sample(lg_ptr, temp_ptr, greedy_ptr, ex_ptr, scr_ptr, out_ptr, V, k, s_lg, s_t, s_ex, emb_w_ptr, emb_ptr,
            E, s_ew, s_e, VP: tl.constexpr, KP: tl.constexpr, EMB: tl.constexpr = False,
            EP: tl.constexpr = 1, PDL: tl.constexpr = False, KEY16: tl.constexpr = False):  # fmt: skip
    # one row: top-k of logits / temp by a threshold search (no sort), then the exponential race among them;
    # EMB: also the picked code's embedding row (E wide) of emb_w into emb (bf16 logits are read as fp32);
    # KEY16: the logits are bf16 (the search runs on their 16-bit order: `_topk_mask`)
    row = tl.program_id(0)
    offs = tl.arange(0, VP)
    ok = offs < V
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    lg = tl.load(lg_ptr + row * s_lg + offs, mask=ok, other=float("-inf")).to(tl.float32)
    best = tl.argmax(lg, axis=0)
    t = tl.maximum(tl.load(temp_ptr + row * s_t), 1e-5)
    # the top k of lg / t are those of lg (t > 0; bf16 neighbours stay apart and ties stay ties after the division)
    if KEY16:
        sel = _topk_mask(lg, ok, k, True)
    else:
        sel = _topk_mask(lg / t, ok, k, False)
    j, jok, idx = _topk_codes(sel, offs, scr_ptr, row, k, KP)
    v = tl.load(lg_ptr + row * s_lg + idx, mask=jok, other=float("-inf")).to(tl.float32) / t
    code = _race(v, idx, j, jok, ex_ptr, row, s_ex)
    g = tl.load(greedy_ptr + row).to(tl.int32)
    code = tl.where(g != 0, best, code).to(tl.int64)
    tl.store(out_ptr + row, code)
    if EMB:
        eo = tl.arange(0, EP)
        e_ok = eo < E
        tl.store(emb_ptr + row * s_e + eo, tl.load(emb_w_ptr + code * s_ew + eo, mask=e_ok), mask=e_ok)


@triton.jit
def _attn_rows(qkv_ptr, qkw_ptr, cos_ptr, sin_ptr, pos_ptr, kc_ptr, vc_ptr, o_ptr, s_qkv, s_cs, s_kb, s_kh, s_kl,
               s_o, eps, scale, NH: tl.constexpr, KVH: tl.constexpr, HD: tl.constexpr,
               BL: tl.constexpr, NB: tl.constexpr, PDL: tl.constexpr = False, ws_ptr=None, cnt_ptr=None,
               SPLIT: tl.constexpr = 1):  # fmt: skip
    # one (row, query head) of the talker: q/k head norms, RoPE at the row's own position, the cache write (the
    # first query head of each KV head writes), attention over positions 0..pos in blocks of BL (online softmax).
    # SPLIT > 1 (program_id(2): which of SPLIT runs of NB / SPLIT blocks): each split's (max, sum, P·V) in fp32 in
    # ws [NH * rows, SPLIT, HD + 2]; the (row, head)'s last split to arrive joins them, as flash-decoding does
    bi = tl.program_id(0)
    qh = tl.program_id(1)
    sp = tl.program_id(2)
    h = qh // (NH // KVH)
    d = tl.arange(0, HD)
    dr = (d + HD // 2) % HD
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    pos = tl.load(pos_ptr + bi)
    cos = tl.load(cos_ptr + bi * s_cs + d).to(tl.float32)
    sin = tl.load(sin_ptr + bi * s_cs + d).to(tl.float32)  # pre-signed (kernels.signed_sin)
    row = qkv_ptr + bi * s_qkv
    kh = NH + h
    k_new = _head_norm_rope(row, qkw_ptr, kh, d, dr, cos, sin, eps, HD)
    v_new = tl.load(row + (NH + KVH + h) * HD + d).to(tl.float32)
    cache = bi * s_kb + h * s_kh
    write = qh % (NH // KVH) == 0
    if SPLIT > 1:
        write = write & (sp == 0)
    if write:
        tl.store(kc_ptr + cache + pos * s_kl + d, k_new.to(kc_ptr.dtype.element_ty))
        tl.store(vc_ptr + cache + pos * s_kl + d, v_new.to(vc_ptr.dtype.element_ty))
    qq = _head_norm_rope(row, qkw_ptr, qh, d, dr, cos, sin, eps, HD)
    m = tl.max(tl.full((BL,), float("-inf"), tl.float32), axis=0)
    den = tl.sum(tl.zeros((BL,), tl.float32), axis=0)
    acc = tl.zeros((HD,), tl.float32)
    NBS: tl.constexpr = (NB + SPLIT - 1) // SPLIT
    lo = sp * NBS if SPLIT > 1 else 0  # (split 1: the loop's bounds stay constants, as before the split)
    # the bucket's NB blocks (past pos: masked, no reads); positions another program writes are never read
    for blk in range(lo, lo + NBS):
        j = blk * BL + tl.arange(0, BL)
        before = (j < pos)[:, None]
        kk = tl.load(kc_ptr + cache + j[:, None] * s_kl + d[None, :], mask=before, other=0.0).to(tl.float32)
        vv = tl.load(vc_ptr + cache + j[:, None] * s_kl + d[None, :], mask=before, other=0.0).to(tl.float32)
        here = (j == pos)[:, None]
        kk = tl.where(here, k_new[None, :], kk)
        vv = tl.where(here, v_new[None, :], vv)
        sc = tl.where(j <= pos, tl.sum(qq[None, :] * kk, axis=1) * scale, float("-inf"))
        m_new = tl.maximum(m, tl.max(sc, axis=0))
        if SPLIT > 1:  # a split's blocks may all lie past pos: no NaN from -inf - -inf
            m_new = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - m_new)
        p = tl.exp(sc - m_new)
        den = den * alpha + tl.sum(p, axis=0)
        acc = acc * alpha + tl.sum(p.to(tl.bfloat16).to(tl.float32)[:, None] * vv, axis=0)
        m = m_new
    if SPLIT > 1:
        slot = ws_ptr + ((bi * NH + qh) * SPLIT + sp) * (HD + 2)
        tl.store(slot + d, acc)
        tl.store(slot + HD, tl.where(den > 0, m, -1e30))  # a split past pos weighs nothing in the join
        tl.store(slot + HD + 1, den)
        tl.debug_barrier()  # every thread's partial stored before the counter moves
        if tl.atomic_add(cnt_ptr + bi * NH + qh, 1, sem="acq_rel") == SPLIT - 1:
            base = ws_ptr + (bi * NH + qh) * SPLIT * (HD + 2)
            m_all = tl.load(base + HD, cache_modifier=".cg")
            for k in tl.static_range(1, SPLIT):
                m_all = tl.maximum(m_all, tl.load(base + k * (HD + 2) + HD, cache_modifier=".cg"))
            acc = tl.zeros((HD,), tl.float32)
            den = tl.sum(tl.zeros((BL,), tl.float32), axis=0)
            for k in tl.static_range(SPLIT):
                w = tl.exp(tl.load(base + k * (HD + 2) + HD, cache_modifier=".cg") - m_all)
                den += w * tl.load(base + k * (HD + 2) + HD + 1, cache_modifier=".cg")
                acc += w * tl.load(base + k * (HD + 2) + d, cache_modifier=".cg")
            tl.store(o_ptr + bi * s_o + qh * HD + d, (acc / den).to(o_ptr.dtype.element_ty))
            tl.store(cnt_ptr + bi * NH + qh, 0)
    else:
        tl.store(o_ptr + bi * s_o + qh * HD + d, (acc / den).to(o_ptr.dtype.element_ty))
