"""The per-frame math, as plain functions over fused weights and the engine's buffers.

The frame step (`step.py`) is a chain of four *units*, each a pure function of tensors (no engine state, no host
sync), so that each can be compiled once (`torch.compile`, dynamic batch) and the whole chain captured as one CUDA
graph per batch bucket:

- `talker_layer`: one talker decoder layer for one new token per slot (writes its K/V into the static cache);
- `talker_head`: final norm, codec head, the talker's logits processors, code-0 sampling, its embedding;
- `predictor_first`: the code predictor's 2-token prefill [talker hidden, code-0 embedding] -> code 1;
- `predictor_next`: one code-predictor step (position 2..15) -> the next code, run 14 times per frame
  (`predictor_next_fused`: the same for 1-2 rows, each layer as five fused kernels of `fused.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from voicepipe.serve.engine import fused, gemv


class FusedLayerError(RuntimeError):
    """A decoder layer the fused engine cannot run."""


class _FusedLayer(NamedTuple):
    """One decoder layer's weights, q/k/v and gate/up fused (module parameters become views: no extra memory)."""

    ln1: torch.Tensor
    ln2: torch.Tensor
    qk_w: torch.Tensor  # [n_q_heads + n_kv_heads, head_dim]: q_norm weight per q head, k_norm weight per kv head
    wqkv: torch.Tensor
    wo: torch.Tensor
    wgu: torch.Tensor
    wd: torch.Tensor
    eps: float
    qk_eps: float


def _fuse_layer(layer: torch.nn.Module, nh: int, kvh: int) -> _FusedLayer:
    a, m = layer.self_attn, layer.mlp
    if any(x.bias is not None for x in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj)):
        raise FusedLayerError("attention/MLP biases are not supported by the fused engine")

    def fuse(mods: list[torch.nn.Linear]) -> torch.Tensor:
        w = torch.cat([x.weight.detach() for x in mods], 0)
        off = 0
        for x in mods:  # re-point the module's own parameters into the fused tensor
            n = x.weight.shape[0]
            x.weight = torch.nn.Parameter(w[off : off + n], requires_grad=False)
            off += n
        return w

    wqkv = fuse([a.q_proj, a.k_proj, a.v_proj])
    wgu = fuse([m.gate_proj, m.up_proj])
    qk_w = torch.cat([a.q_norm.weight.detach()[None].expand(nh, -1), a.k_norm.weight.detach()[None].expand(kvh, -1)])
    return _FusedLayer(
        ln1=layer.input_layernorm.weight.detach(), ln2=layer.post_attention_layernorm.weight.detach(),
        qk_w=qk_w.contiguous(), wqkv=wqkv, wo=a.o_proj.weight.detach(), wgu=wgu, wd=m.down_proj.weight.detach(),
        eps=layer.input_layernorm.variance_epsilon, qk_eps=a.q_norm.variance_epsilon,
    )  # fmt: skip


def _rms(x: torch.Tensor, w: torch.Tensor | None, eps: float) -> torch.Tensor:
    """The package's RMSNorm. fp32: the same arithmetic; bf16/fp16: one fused call (weight applied before rounding)."""
    if x.dtype == torch.float32:
        y = F.rms_norm(x, (x.shape[-1],), None, eps)
        return y if w is None else y * w
    if w is not None and w.dim() > 1:  # per-head weights (q/k norms of all heads at once)
        return F.rms_norm(x, (x.shape[-1],), None, eps) * w
    return F.rms_norm(x, (x.shape[-1],), w, eps)


# weights of at most this many elements go through `gemv.linear` when a unit asks for it (`Dims.gemv`): the
# predictor's in-projection, attention output, MLP down projection and code heads (2-3 M elements each), where the
# Triton GEMV beat cuBLAS at 1-2 rows by 1.2-2.2x; on the larger matrices the two were even (benchmarks/gemv.py)
SMALL_GEMV_MAX_WEIGHT = 3 * 2**20


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, small: bool = False) -> torch.Tensor:
    """F.linear, or the small-M Triton GEMV (`gemv.linear`) for a small weight when `small` (CUDA only)."""
    if small and w.numel() <= SMALL_GEMV_MAX_WEIGHT:
        return gemv.linear(x, w, b)
    return F.linear(x, w, b)


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """sin with its first half negated: rotate_half(x) * sin == roll(x, hd/2) * signed_sin."""
    h = sin.shape[-1] // 2
    return torch.cat([-sin[..., :h], sin[..., h:]], -1)


def rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """Rotary embedding (the package's rotate_half form) with a pre-signed sin table."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), sin_signed)


def attn_qkv(w: _FusedLayer, x: torch.Tensor, nh: int, kvh: int, hd: int, cos: torch.Tensor, sin: torch.Tensor,
             small: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Pre-norm, fused q/k/v projection, per-head q/k norms, RoPE: q [b,nh,n,hd], k and v [b,kvh,n,hd].
    `small`: small weights through the GEMV kernel (`linear`)."""
    b, n, _ = x.shape
    qkv = linear(_rms(x, w.ln1, w.eps), w.wqkv, small=small).view(b, n, nh + 2 * kvh, hd)
    qk = rope(_rms(qkv[:, :, : nh + kvh], w.qk_w, w.qk_eps), cos, sin)
    return qk[:, :, :nh].transpose(1, 2), qk[:, :, nh:].transpose(1, 2), qkv[:, :, nh + kvh :].transpose(1, 2)


def attn_out_mlp(w: _FusedLayer, x: torch.Tensor, o: torch.Tensor, small: bool = False) -> torch.Tensor:
    """Output projection + residual, then the gated MLP + residual; o is the attention output [b,n,nh*hd]."""
    x = x + linear(o, w.wo, small=small)
    g, u = linear(_rms(x, w.ln2, w.eps), w.wgu, small=small).chunk(2, -1)
    return x + linear(F.silu(g) * u, w.wd, small=small)


def decoder_layer(w: _FusedLayer, x: torch.Tensor, nh: int, kvh: int, hd: int, cos: torch.Tensor, sin: torch.Tensor,
                  attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """One pre-norm decoder layer with fused projections; `attend(q, k, v)` stores K/V and returns [b,n,nh*hd]."""
    q, k, v = attn_qkv(w, x, nh, kvh, hd, cos, sin)
    return attn_out_mlp(w, x, attend(q, k, v))


def draws(b: int, k: int, device: torch.device) -> torch.Tensor:
    """The exponential draws of one sampling call's race ([b, k] fp32): `sample` makes them so, or the frame step
    before its layers (`EngineConfig.early_draws`), in the same order, so the same numbers."""
    return torch.empty(b, k, device=device).exponential_()


def sample(logits: torch.Tensor, temp: torch.Tensor, greedy: torch.Tensor, k: int, fused_op: bool = False,
           expo: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Top-k sampling at per-row temperature (greedy rows: argmax), with no host sync.

    Exponential-race sampling (== multinomial: the top-k softmax divided by exponential draws, argmax) keeps the
    whole step free of host syncs, so it can be graphed. `fused_op`: the same draws ([b, k] fp32, drawn the same
    way), the rest in one kernel (`fused.sample_topk`; its unfused math where it cannot run). `expo`: the draws,
    made already (`draws`)."""
    if expo is None:
        expo = draws(logits.shape[0], min(k, logits.shape[-1]), logits.device)
    if fused_op:
        return fused.sample_topk(logits, temp, greedy, expo)
    best = logits.argmax(-1)
    vals, idx = (logits / temp.clamp_min(1e-5)).topk(min(k, logits.shape[-1]), dim=-1)
    probs = vals.softmax(-1)
    pick = (probs / expo).argmax(-1, keepdim=True)
    return torch.where(greedy, best, idx.gather(-1, pick).squeeze(-1))


class Dims(NamedTuple):
    """Head counts and sizes of one decoder stack (compile-time constants); `gemv`: its small weights go through
    the Triton GEMV (`linear`); `sample`: its codes are sampled by the one-kernel `fused.sample_topk`; `head`: the
    fused predictor step's final norm + code head as one `fused.rms_linear` and its sampling + code embedding as one
    `fused.sample_embed` (with `sample`); `split`: the fused matmul + residual ops above 2 rows split K over this
    many programs per output tile (`fused.linear_residual`); `attn`: the talker's attention as one
    `fused.attn_decode_rows` a layer; `mm` (with `attn`): a one-row talker step's matmuls as the fused ops."""

    nh: int
    kvh: int
    hd: int
    gemv: bool = False
    sample: bool = False
    head: bool = False
    split: int = 1
    attn: bool = False
    mm: bool = False


def talker_layer(w: _FusedLayer, x: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, p: torch.Tensor,
                 cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor, d: Dims) -> torch.Tensor:
    """One talker layer for one token per slot; slot i sits at position p[i] of the static cache kc/vc [S,kvh,Lmax,hd].

    Attends over the first L = mask.shape[-1] cache positions; batch b = x.shape[0] (slots [0, b))."""
    b, L = x.shape[0], mask.shape[-1]
    if d.attn and d.mm and b == 1:  # one row (a trace of its own with `one_row_bucket`; never true in a dynamic one)
        h = x.view(b, -1)
        qkv = fused.rms_linear(h, w.ln1, w.wqkv, w.eps)
        o = fused.attn_decode_rows(qkv, w.qk_w, cos.reshape(b, -1), sin.reshape(b, -1), p, kc, vc, L, w.qk_eps,
                                   d.nh, d.kvh)
        h = fused.linear_residual(o.reshape(b, -1), w.wo, h)
        return fused.linear_residual(fused.rms_glu(h, w.ln2, w.wgu, w.eps), w.wd, h).view(b, 1, -1)
    if d.attn:
        qkv = linear(_rms(x, w.ln1, w.eps), w.wqkv, small=d.gemv).view(b, -1)
        o = fused.attn_decode_rows(qkv, w.qk_w, cos.reshape(b, -1), sin.reshape(b, -1), p, kc, vc, L, w.qk_eps,
                                   d.nh, d.kvh)
        return attn_out_mlp(w, x, o.view(b, 1, -1), d.gemv)
    q, k, v = attn_qkv(w, x, d.nh, d.kvh, d.hd, cos, sin, d.gemv)
    bidx = torch.arange(b, device=x.device)
    kc[bidx, :, p] = k[:, :, 0]
    vc[bidx, :, p] = v[:, :, 0]
    # GQA decode: fold each KV head's query heads into the query-length axis (no KV repeat)
    o = F.scaled_dot_product_attention(q.reshape(b, d.kvh, -1, d.hd), kc[:b, :, :L], vc[:b, :, :L], attn_mask=mask)
    return attn_out_mlp(w, x, o.reshape(b, 1, -1), d.gemv)


class Sampling(NamedTuple):
    """Per-slot sampling state (full-size buffers [S, ...]; a unit reads and writes rows [0, b))."""

    temp: torch.Tensor
    greedy: torch.Tensor
    sub_temp: torch.Tensor
    sub_greedy: torch.Tensor
    rep_pen: torch.Tensor
    seen: torch.Tensor
    n_sampled: torch.Tensor
    min_new: torch.Tensor


def talker_head(x: torch.Tensor, norm_w: torch.Tensor, eps: float, head_w: torch.Tensor, embed_w: torch.Tensor,
                suppress: torch.Tensor, eos: int, s: Sampling, top_k: int, fused_sample: bool = False,
                expo: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Final norm, codec head and the package's talker logits processors (repetition penalty, suppressed control
    codes, min length), then code 0. Returns (talker hidden [b,H], code0 [b], its embedding [b,H])."""
    b = x.shape[0]
    hidden = _rms(x, norm_w, eps)[:, 0]
    logits = F.linear(hidden, head_w).float()
    rp = s.rep_pen[:b]
    logits = torch.where(s.seen[:b], torch.where(logits < 0, logits * rp, logits / rp), logits)
    logits = logits.masked_fill(suppress, float("-inf"))
    block_eos = s.n_sampled[:b] < s.min_new[:b]
    logits[:, eos] = torch.where(block_eos, float("-inf"), logits[:, eos])
    code0 = sample(logits, s.temp[:b], s.greedy[:b], top_k, fused_sample, expo)
    s.seen[:b].scatter_(1, code0[:, None], True)
    s.n_sampled[:b] += 1
    return hidden, code0, F.embedding(code0, embed_w)


def _project(x: torch.Tensor, proj_w: torch.Tensor | None, proj_b: torch.Tensor | None, small: bool = False
             ) -> torch.Tensor:  # fmt: skip
    """The predictor's input projection of x; a row of a projected embedding table (`projected_tables`: [projected
    | embedding]) is projected already: its first part."""
    if proj_w is not None and x.shape[-1] == proj_w.shape[0] + proj_w.shape[1]:
        return x[..., : proj_w.shape[0]]
    return x if proj_w is None else linear(x, proj_w, proj_b, small)


@torch.no_grad()
def projected_tables(embeds: list[torch.Tensor], proj_w: torch.Tensor, proj_b: torch.Tensor | None,
                     small: bool = False) -> list[torch.Tensor]:  # fmt: skip
    """Each code embedding table [V, H] with its rows' input projection before them: [V, Hp + H]. A predictor step
    whose code is sampled with such a table (`fused.sample_embed` copies the picked row) needs no projection kernel
    of its own (`_project`). Row by row through `linear` at one row, the kernel a one-row step runs, so each row is
    bitwise what the step would compute."""
    out = []
    for w in embeds:
        proj = torch.cat([linear(w[i : i + 1], proj_w, proj_b, small) for i in range(w.shape[0])])
        out.append(torch.cat([proj, w], 1).contiguous())
    return out


def predictor_first(layers: list[_FusedLayer], hidden: torch.Tensor, e0: torch.Tensor, pk: list[torch.Tensor],
                    pv: list[torch.Tensor], cos: torch.Tensor, sin: torch.Tensor, proj_w: torch.Tensor | None,
                    proj_b: torch.Tensor | None, norm_w: torch.Tensor, eps: float, head_w: torch.Tensor,
                    embed_w: torch.Tensor, s: Sampling, top_k: int, d: Dims, expo: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """The code predictor's prefill over [talker hidden, code-0 embedding] at positions 0-1 (cache pk/pv [S,kvh,16,hd],
    cos/sin [2,1,hd]), then code 1. Returns (last hidden [b,Hp], code1 [b], its embedding [b,H])."""
    b = hidden.shape[0]
    h = _project(torch.stack([hidden, e0], 1), proj_w, proj_b, d.gemv)
    for w, kc, vc in zip(layers, pk, pv, strict=True):
        q, k, v = attn_qkv(w, h, d.nh, d.kvh, d.hd, cos, sin, d.gemv)
        kc[:b, :, :2] = k
        vc[:b, :, :2] = v
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        h = attn_out_mlp(w, h, o.transpose(1, 2).reshape(b, 2, -1), d.gemv)
    h = _rms(h[:, -1], norm_w, eps)
    c = sample(linear(h, head_w, small=d.gemv).float(), s.sub_temp[:b], s.sub_greedy[:b], top_k, d.sample, expo)
    return h, c, F.embedding(c, embed_w)


def predictor_next(layers: list[_FusedLayer], e: torch.Tensor, pk: list[torch.Tensor], pv: list[torch.Tensor],
                   pos: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                   proj_w: torch.Tensor | None, proj_b: torch.Tensor | None, norm_w: torch.Tensor, eps: float,
                   head_w: torch.Tensor, embed_w: torch.Tensor, s: Sampling, top_k: int, d: Dims,
                   expo: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """One code-predictor step: the previous code's embedding e [b,H] enters at position `pos` (a 1-element tensor;
    cos/sin [1,1,hd]; mask [1,16], True up to pos), attends over the whole 16-slot cache under the mask, and the next
    code is sampled. Returns (code [b], its embedding [b,H])."""
    b = e.shape[0]
    h = _project(e[:, None], proj_w, proj_b, d.gemv)
    for w, kc, vc in zip(layers, pk, pv, strict=True):
        q, k, v = attn_qkv(w, h, d.nh, d.kvh, d.hd, cos, sin, d.gemv)
        kc[:b].index_copy_(2, pos, k)
        vc[:b].index_copy_(2, pos, v)
        o = F.scaled_dot_product_attention(q.reshape(b, d.kvh, -1, d.hd), kc[:b], vc[:b], attn_mask=mask)
        h = attn_out_mlp(w, h, o.reshape(b, 1, -1), d.gemv)
    h = _rms(h[:, 0], norm_w, eps)
    c = sample(linear(h, head_w, small=d.gemv).float(), s.sub_temp[:b], s.sub_greedy[:b], top_k, d.sample, expo)
    return c, F.embedding(c, embed_w)


def predictor_next_fused(layers: list[_FusedLayer], e: torch.Tensor, pk: list[torch.Tensor], pv: list[torch.Tensor],
                         pos: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                         proj_w: torch.Tensor | None, proj_b: torch.Tensor | None, norm_w: torch.Tensor, eps: float,
                         head_w: torch.Tensor, embed_w: torch.Tensor, s: Sampling, top_k: int, d: Dims,
                         expo: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """`predictor_next` with each layer as five fused kernels (`fused.py`: norm + q/k/v, attention with the cache
    write, output projection + residual, norm + gate/up + SiLU, down projection + residual): the same math, for
    the 1-2 rows of a one-stream step (`mask` is implied by `pos`)."""
    b = e.shape[0]
    h = _project(e, proj_w, proj_b, d.gemv)
    for w, kc, vc in zip(layers, pk, pv, strict=True):
        qkv = fused.rms_linear(h, w.ln1, w.wqkv, w.eps)
        h = fused.linear_residual(fused.attn_decode(qkv, w.qk_w, cos, sin, pos, kc, vc, w.qk_eps, d.nh, d.kvh),
                                  w.wo, h, d.split)
        h = fused.linear_residual(fused.rms_glu(h, w.ln2, w.wgu, w.eps), w.wd, h, d.split)
    if d.head and d.sample:  # norm + head in one kernel (bf16 logits, as linear(...) gives), sampling + embedding
        logits = fused.rms_linear(h, norm_w, head_w, eps)
        if expo is None:
            expo = draws(b, min(top_k, logits.shape[-1]), logits.device)  # as `sample`
        return fused.sample_embed(logits, s.sub_temp[:b], s.sub_greedy[:b], expo, embed_w)
    h = _rms(h, norm_w, eps)
    c = sample(linear(h, head_w, small=d.gemv).float(), s.sub_temp[:b], s.sub_greedy[:b], top_k, d.sample, expo)
    return c, F.embedding(c, embed_w)
