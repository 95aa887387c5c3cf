"""Triton source of `persistent.py`'s one-kernel code-predictor step (imported on first use only: Triton's
`@triton.jit` decides at decoration time whether it runs in the interpreter, and CPU test machines may have none).

One launch runs a whole predictor step for 1-2 rows: the input projection, 5 decoder layers of 5 phases each, the
final norm + code head and the sampler with the code's embedding row. A phase's work is spread over the grid's P
programs (all resident: P is at most the number of SMs); between phases every program waits at a grid-wide
barrier (`_grid_sync`). STAGE >= 0 runs one phase alone (layers `l_lo`..`l_hi` - 1, no barrier): what Triton's
interpreter runs (its programs run one after another, so a spin barrier would never open), and a host-side loop
over phases gives the same math. The phases are the math of `fused.py`'s ops, with their bf16 rounding points."""

from __future__ import annotations

import triton
import triton.language as tl

from voicepipe.serve.engine._fused_kernels import _race, _topk_codes, _topk_mask

# phases (STAGE): 0 input projection, 1 norm + q/k/v, 2 attention, 3 output projection + residual,
# 4 norm + gate/up + SiLU, 5 down projection + residual, 6 final norm + code head, 7 sampling + embedding
N_TAB = 9  # per layer, element offsets from `base` of: ln1, ln2, qk_w, wqkv, wo, wgu, wd, k cache, v cache


@triton.jit
def _bf(x):
    return x.to(tl.bfloat16).to(tl.float32)


@triton.jit
def _grid_sync(bar_ptr, nb, P: tl.constexpr, SYNC: tl.constexpr):
    # barrier number nb of this launch: bar[0] counts arrivals over the whole launch, so barrier nb opens when it
    # reaches nb * P (one atomic to arrive, then polling); `_grid_done` sets it back to zero at the launch's end.
    # Stores before it are visible to loads after it (release by the arrival, acquire by the poll; activations are
    # read with .cg, from L2). SYNC=0 (timing only): no barrier
    if SYNC:
        tl.debug_barrier()
        tl.atomic_add(bar_ptr, 1, sem="release")
        while tl.atomic_add(bar_ptr, 0, sem="acquire") < nb * P:
            pass
        tl.debug_barrier()
    return nb + 1


@triton.jit
def _grid_done(bar_ptr, P: tl.constexpr, SYNC: tl.constexpr):
    # the last program to finish (bar[1] counts them) sets both counters back to zero: every other program has left
    # its last barrier by then, so the next launch (or CUDA-graph replay) starts from zero
    if SYNC:
        tl.debug_barrier()
        if tl.atomic_add(bar_ptr + 1, 1, sem="acq_rel") == P - 1:
            tl.atomic_xchg(bar_ptr, 0, sem="relaxed")
            tl.atomic_xchg(bar_ptr + 1, 0, sem="relaxed")


@triton.jit
def _ld(w_ptr, t, ok, N: tl.constexpr, K: tl.constexpr, KP: tl.constexpr, BN: tl.constexpr):
    # weight rows [t*BN, t*BN + BN) of w [N, K] as a bf16 tile (KP: K to a power of two, masked; `ok`
    # False: nothing read). Loaded a phase ahead, before the barrier, its HBM latency overlaps the wait
    # [1, BN, KP]: loaded in the 3-d layout `_mv` multiplies in (a 2-d tile held across a barrier or a loop was
    # converted to it through shared memory)
    offs_n = (t * BN + tl.arange(0, BN))[None, :, None]
    offs_k = tl.arange(0, KP)[None, None, :]
    return tl.load(w_ptr + offs_n * K + offs_k, mask=(offs_n < N) & (offs_k < K) & ok, other=0.0,
                   eviction_policy="evict_first")


@triton.jit
def _xrows(x_ptr, M, ln_ptr, eps, NORM: tl.constexpr, K: tl.constexpr, KP: tl.constexpr):
    # the (<= 2) activation rows [2, KP] in fp32, from L2; NORM: RMSNorm * ln, rounded to bf16
    # (_fused_kernels._rms_gemv's)
    offs_m = tl.arange(0, 2)
    offs_k = tl.arange(0, KP)
    k_ok = offs_k < K
    x = tl.load(x_ptr + offs_m[:, None] * K + offs_k[None, :], mask=(offs_m < M)[:, None] & k_ok[None, :],
                other=0.0, cache_modifier=".cg").to(tl.float32)
    if NORM:
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / K + eps)
        g = tl.load(ln_ptr + offs_k, mask=k_ok, other=0.0).to(tl.float32)
        x = _bf(x * rstd[:, None] * g[None, :])
    return x


@triton.jit
def _mv(x, w):
    # [2, BN] = x [2, KP] @ w [1, BN, KP].T, fp32 products and sums (CUDA cores: 1-2 rows)
    return tl.sum(x[:, None, :] * w.to(tl.float32), axis=2)


@triton.jit
def _put(y_ptr, M, t, val, N: tl.constexpr, BN: tl.constexpr):
    offs_m = tl.arange(0, 2)
    offs_n = t * BN + tl.arange(0, BN)
    tl.store(y_ptr + offs_m[:, None] * N + offs_n[None, :], val.to(tl.bfloat16),
             mask=(offs_m < M)[:, None] & (offs_n < N)[None, :])


@triton.jit
def _norm_phase(x_ptr, M, ln_ptr, eps, w_ptr, y_ptr, pid, w0, u0, GLU: tl.constexpr, N: tl.constexpr,
                K: tl.constexpr, KP: tl.constexpr, BN: tl.constexpr, P: tl.constexpr):  # fmt: skip
    # y [M, N] = rms(x)*ln @ w.T; GLU: w = [gate; up] (2N rows), y = silu(gate) * up. w0 (u0): the program's first
    # tile (of up), loaded before; further tiles are loaded here
    x = _xrows(x_ptr, M, ln_ptr, eps, True, K, KP)
    NT: tl.constexpr = (N + BN - 1) // BN
    for i in tl.static_range((NT + P - 1) // P):
        t = pid + i * P
        if i == 0:
            w = w0
        else:
            w = _ld(w_ptr, t, True, N, K, KP, BN)
        out = _bf(_mv(x, w))
        if GLU:
            if i == 0:
                u = u0
            else:
                u = _ld(w_ptr + N * K, t, True, N, K, KP, BN)
            out = _bf(out / (1.0 + tl.exp(-out))) * _bf(_mv(x, u))
        _put(y_ptr, M, t, out, N, BN)


@triton.jit
def _res_phase(x_ptr, M, w_ptr, b_ptr, h_ptr, pid, w0, RES: tl.constexpr, BIAS: tl.constexpr, N: tl.constexpr,
               K: tl.constexpr, KP: tl.constexpr, BN: tl.constexpr, P: tl.constexpr):  # fmt: skip
    # h[:, tile] = (h[:, tile] +) bf16(x @ w.T (+ b)): each program writes only the columns it reads (in place)
    x = _xrows(x_ptr, M, x_ptr, 0.0, False, K, KP)
    NT: tl.constexpr = (N + BN - 1) // BN
    offs_m = tl.arange(0, 2)
    for i in tl.static_range((NT + P - 1) // P):
        t = pid + i * P
        if i == 0:
            w = w0
        else:
            w = _ld(w_ptr, t, True, N, K, KP, BN)
        out = _mv(x, w)
        offs_n = t * BN + tl.arange(0, BN)
        ok = (offs_m < M)[:, None] & (offs_n < N)[None, :]
        if BIAS:  # gemv.linear's: the bias added in fp32 before the one rounding
            out += tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        out = _bf(out)
        if RES:
            out += tl.load(h_ptr + offs_m[:, None] * N + offs_n[None, :], mask=ok, other=0.0,
                           cache_modifier=".cg").to(tl.float32)
        _put(h_ptr, M, t, out, N, BN)


@triton.jit
def _attn_phase(qkv_ptr, qkw_ptr, cos_ptr, sin_ptr, pos_ptr, kc_ptr, vc_ptr, o_ptr, M, s_kb, s_kh, s_kl, eps, scale,
                pid, NH: tl.constexpr, KVH: tl.constexpr, HD: tl.constexpr, L: tl.constexpr, P: tl.constexpr):
    # _fused_kernels._attn per (row, query head) instead of per (row, KV head): each item normalises and rotates its KV
    # head's new key itself; the item of the head's first query head writes the caches at pos (the others read
    # only positions before pos there, and take pos's key and value from registers)
    G: tl.constexpr = NH // KVH
    QKV: tl.constexpr = (NH + 2 * KVH) * HD
    d = tl.arange(0, HD)
    dr = (d + HD // 2) % HD
    pos = tl.load(pos_ptr)
    cos = tl.load(cos_ptr + d).to(tl.float32)
    sin = tl.load(sin_ptr + d).to(tl.float32)
    j = tl.arange(0, L)
    for it in tl.static_range((2 * NH + P - 1) // P):
        item = pid + it * P
        if item < M * NH:
            bi = item // NH
            qh = item % NH
            h = qh // G
            row = qkv_ptr + bi * QKV
            kh = NH + h
            k = tl.load(row + kh * HD + d, cache_modifier=".cg").to(tl.float32)
            kr = tl.load(row + kh * HD + dr, cache_modifier=".cg").to(tl.float32)
            krs = 1.0 / tl.sqrt(tl.sum(k * k, axis=0) / HD + eps)
            kw = tl.load(qkw_ptr + kh * HD + d).to(tl.float32)
            kwr = tl.load(qkw_ptr + kh * HD + dr).to(tl.float32)
            kn = _bf(_bf(k * krs) * kw)
            knr = _bf(_bf(kr * krs) * kwr)
            k_new = _bf(_bf(kn * cos) + knr * sin)
            v_new = tl.load(row + (NH + KVH + h) * HD + d, cache_modifier=".cg").to(tl.float32)
            cache = bi * s_kb + h * s_kh
            if qh % G == 0:
                tl.store(kc_ptr + cache + pos * s_kl + d, k_new.to(tl.bfloat16))
                tl.store(vc_ptr + cache + pos * s_kl + d, v_new.to(tl.bfloat16))
            before = (j < pos)[:, None]
            kk = tl.load(kc_ptr + cache + j[:, None] * s_kl + d[None, :], mask=before, other=0.0,
                         cache_modifier=".cg").to(tl.float32)
            vv = tl.load(vc_ptr + cache + j[:, None] * s_kl + d[None, :], mask=before, other=0.0,
                         cache_modifier=".cg").to(tl.float32)
            here = (j == pos)[:, None]
            kk = tl.where(here, k_new[None, :], kk)
            vv = tl.where(here, v_new[None, :], vv)
            q = tl.load(row + qh * HD + d, cache_modifier=".cg").to(tl.float32)
            qr = tl.load(row + qh * HD + dr, cache_modifier=".cg").to(tl.float32)
            qrs = 1.0 / tl.sqrt(tl.sum(q * q, axis=0) / HD + eps)
            qw = tl.load(qkw_ptr + qh * HD + d).to(tl.float32)
            qwr = tl.load(qkw_ptr + qh * HD + dr).to(tl.float32)
            qn = _bf(_bf(q * qrs) * qw)
            qnr = _bf(_bf(qr * qrs) * qwr)
            qq = _bf(_bf(qn * cos) + qnr * sin)
            s = tl.sum(qq[None, :] * kk, axis=1) * scale
            s = tl.where(j <= pos, s, float("-inf"))
            p = tl.exp(s - tl.max(s, axis=0))
            p = p / tl.sum(p, axis=0)
            o = tl.sum(p[:, None] * vv, axis=0)
            tl.store(o_ptr + bi * (NH * HD) + qh * HD + d, o.to(tl.bfloat16))


@triton.jit
def _sample_phase(lg_ptr, temp_ptr, greedy_ptr, ex_ptr, scr_ptr, out_ptr, k, s_t, s_ex, emb_w_ptr, emb_ptr, M, pid,
                  V: tl.constexpr, E: tl.constexpr, VP: tl.constexpr, KP: tl.constexpr, EP: tl.constexpr):  # fmt: skip
    # _fused_kernels._sample with EMB (one row per program, programs 0..M-1): threshold top-k, the exponential race, the
    # code's embedding row
    if pid < M:
        row = pid
        offs = tl.arange(0, VP)
        ok = offs < V
        lg = tl.load(lg_ptr + row * V + offs, mask=ok, other=float("-inf"), cache_modifier=".cg").to(tl.float32)
        best = tl.argmax(lg, axis=0)
        t = tl.maximum(tl.load(temp_ptr + row * s_t), 1e-5)
        j, jok, idx = _topk_codes(_topk_mask(lg / t, ok, k, False), offs, scr_ptr, row, k, KP)
        v = tl.load(lg_ptr + row * V + idx, mask=jok, other=float("-inf"), cache_modifier=".cg").to(tl.float32) / t
        code = _race(v, idx, j, jok, ex_ptr, row, s_ex)
        g = tl.load(greedy_ptr + row).to(tl.int32)
        code = tl.where(g != 0, best, code).to(tl.int64)
        tl.store(out_ptr + row, code)
        eo = tl.arange(0, EP)
        e_ok = eo < E
        tl.store(emb_ptr + row * E + eo, tl.load(emb_w_ptr + code * E + eo, mask=e_ok), mask=e_ok)


@triton.jit
def predictor_step(base, tab_ptr, e_ptr, pw_ptr, pb_ptr, h_ptr, qkv_ptr, o_ptr, a_ptr, lg_ptr, norm_ptr, head_ptr,
                   emb_w_ptr, temp_ptr, greedy_ptr, ex_ptr, scr_ptr, code_ptr, e_out_ptr, cos_ptr, sin_ptr, pos_ptr,
                   bar_ptr, M, eps, qk_eps, norm_eps, scale, s_kb, s_kh, s_kl, s_t, s_ex, k, l_lo, l_hi,
                   H: tl.constexpr, E: tl.constexpr, NH: tl.constexpr, KVH: tl.constexpr, HD: tl.constexpr,
                   FF: tl.constexpr, L: tl.constexpr, V: tl.constexpr, VP: tl.constexpr, KP: tl.constexpr,
                   EP: tl.constexpr, HP: tl.constexpr, FFP: tl.constexpr, OP: tl.constexpr, PROJ: tl.constexpr,
                   PROJ_BIAS: tl.constexpr, P: tl.constexpr, STAGE: tl.constexpr, BN_PROJ: tl.constexpr,
                   BN_QKV: tl.constexpr, BN_O: tl.constexpr, BN_GLU: tl.constexpr, BN_DOWN: tl.constexpr,
                   BN_HEAD: tl.constexpr, SYNC: tl.constexpr = True, WORK: tl.constexpr = 255):  # fmt: skip
    # HP / FFP / OP / EP: H, FF, NH * HD, E to powers of two. In the one-launch form (STAGE < 0) each phase's first
    # weight tile is loaded during the phase before, ahead of the barrier. Timing only (wrong results): SYNC False
    # runs no barriers; WORK, a bit mask of the phases that run (bit i: phase i above; 255: all)
    pid = tl.program_id(0)
    QKV: tl.constexpr = (NH + 2 * KVH) * HD
    ALL: tl.constexpr = STAGE < 0
    R0: tl.constexpr = ALL and WORK % 2 == 1
    R1: tl.constexpr = ALL and (WORK // 2) % 2 == 1
    R2: tl.constexpr = ALL and (WORK // 4) % 2 == 1
    R3: tl.constexpr = ALL and (WORK // 8) % 2 == 1
    R4: tl.constexpr = ALL and (WORK // 16) % 2 == 1
    R5: tl.constexpr = ALL and (WORK // 32) % 2 == 1
    R6: tl.constexpr = ALL and (WORK // 64) % 2 == 1
    R7: tl.constexpr = ALL and (WORK // 128) % 2 == 1
    nb = 1  # the next barrier's number
    if R0 or STAGE == 0:  # h = e @ proj.T + b (gemv.linear's math), or e itself
        if PROJ:
            w_p = _ld(pw_ptr, pid, True, H, E, EP, BN_PROJ)
            _res_phase(e_ptr, M, pw_ptr, pb_ptr, h_ptr, pid, w_p, False, PROJ_BIAS, H, E, EP, BN_PROJ, P)
        else:
            offs = pid * 1024 + tl.arange(0, 1024)
            for r in tl.static_range(2):
                if r < M:
                    tl.store(h_ptr + r * H + offs, tl.load(e_ptr + r * E + offs, mask=offs < H), mask=offs < H)
    w_q = _ld(base + tl.multiple_of(tl.load(tab_ptr + l_lo * 9 + 3), 8), pid, R1, QKV, H, HP, BN_QKV)
    if ALL:
        nb = _grid_sync(bar_ptr, nb, P, SYNC)
    for layer in range(l_lo, l_hi):
        tab = tab_ptr + layer * 9
        ln1 = base + tl.multiple_of(tl.load(tab + 0), 8)
        ln2 = base + tl.multiple_of(tl.load(tab + 1), 8)
        qkw = base + tl.multiple_of(tl.load(tab + 2), 8)
        wqkv = base + tl.multiple_of(tl.load(tab + 3), 8)
        wo = base + tl.multiple_of(tl.load(tab + 4), 8)
        wgu = base + tl.multiple_of(tl.load(tab + 5), 8)
        wd = base + tl.multiple_of(tl.load(tab + 6), 8)
        kc = base + tl.multiple_of(tl.load(tab + 7), 8)
        vc = base + tl.multiple_of(tl.load(tab + 8), 8)
        if STAGE == 1:
            w_q = _ld(wqkv, pid, True, QKV, H, HP, BN_QKV)
        if R1 or STAGE == 1:
            _norm_phase(h_ptr, M, ln1, eps, wqkv, qkv_ptr, pid, w_q, w_q, False, QKV, H, HP, BN_QKV, P)
        if R3:
            w_o = _ld(wo, pid, True, H, NH * HD, OP, BN_O)  # held through attention
        if ALL:
            nb = _grid_sync(bar_ptr, nb, P, SYNC)
        if R2 or STAGE == 2:
            _attn_phase(qkv_ptr, qkw, cos_ptr, sin_ptr, pos_ptr, kc, vc, o_ptr, M, s_kb, s_kh, s_kl, qk_eps, scale,
                        pid, NH, KVH, HD, L, P)
        if ALL:
            nb = _grid_sync(bar_ptr, nb, P, SYNC)
        if STAGE == 3:
            w_o = _ld(wo, pid, True, H, NH * HD, OP, BN_O)
        if R3 or STAGE == 3:
            _res_phase(o_ptr, M, wo, wo, h_ptr, pid, w_o, True, False, H, NH * HD, OP, BN_O, P)
        if R4 or STAGE == 4:
            w_g = _ld(wgu, pid, True, FF, H, HP, BN_GLU)
            w_u = _ld(wgu + FF * H, pid, True, FF, H, HP, BN_GLU)
        if ALL:
            nb = _grid_sync(bar_ptr, nb, P, SYNC)
        if R4 or STAGE == 4:
            _norm_phase(h_ptr, M, ln2, eps, wgu, a_ptr, pid, w_g, w_u, True, FF, H, HP, BN_GLU, P)
        if R5 or STAGE == 5:
            w_d = _ld(wd, pid, True, H, FF, FFP, BN_DOWN)
        if ALL:
            nb = _grid_sync(bar_ptr, nb, P, SYNC)
        if R5 or STAGE == 5:
            _res_phase(a_ptr, M, wd, wd, h_ptr, pid, w_d, True, False, H, FF, FFP, BN_DOWN, P)
        if R1:  # the next layer's first tile (none after the last layer)
            nxt = base + tl.multiple_of(tl.load(tab + tl.where(layer + 1 < l_hi, 9, 0) + 3), 8)
            w_q = _ld(nxt, pid, layer + 1 < l_hi, QKV, H, HP, BN_QKV)
        if ALL:
            nb = _grid_sync(bar_ptr, nb, P, SYNC)
    if R6 or STAGE == 6:
        w_h = _ld(head_ptr, pid, True, V, H, HP, BN_HEAD)
        _norm_phase(h_ptr, M, norm_ptr, norm_eps, head_ptr, lg_ptr, pid, w_h, w_h, False, V, H, HP, BN_HEAD, P)
    if ALL:
        nb = _grid_sync(bar_ptr, nb, P, SYNC)
    if R7 or STAGE == 7:
        _sample_phase(lg_ptr, temp_ptr, greedy_ptr, ex_ptr, scr_ptr, code_ptr, k, s_t, s_ex, emb_w_ptr, e_out_ptr, M,
                      pid, V, E, VP, KP, EP)
    if ALL:
        _grid_done(bar_ptr, P, SYNC)
