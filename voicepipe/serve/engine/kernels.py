"""The per-frame math, as plain functions over fused weights: RMSNorm, RoPE, one decoder layer, sampling.

The engine's frame step (`step.py`) strings these together; keeping them free of engine state is what lets them be
compiled (fused) and graph-captured.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


class FusedLayerError(RuntimeError):
    """A decoder layer the fused engine cannot run."""


@dataclass
class _FusedLayer:
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


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """sin with its first half negated: rotate_half(x) * sin == roll(x, hd/2) * signed_sin."""
    h = sin.shape[-1] // 2
    return torch.cat([-sin[..., :h], sin[..., h:]], -1)


def rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """Rotary embedding (the package's rotate_half form) with a pre-signed sin table."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), sin_signed)


def decoder_layer(w: _FusedLayer, x: torch.Tensor, nh: int, kvh: int, hd: int, cos: torch.Tensor, sin: torch.Tensor,
                  attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """One pre-norm decoder layer with fused projections; `attend(q, k, v)` stores K/V and returns [b,n,nh*hd]."""
    b, n, _ = x.shape
    qkv = F.linear(_rms(x, w.ln1, w.eps), w.wqkv).view(b, n, nh + 2 * kvh, hd)
    qk = rope(_rms(qkv[:, :, : nh + kvh], w.qk_w, w.qk_eps), cos, sin)
    q, k, v = qk[:, :, :nh].transpose(1, 2), qk[:, :, nh:].transpose(1, 2), qkv[:, :, nh + kvh :].transpose(1, 2)
    x = x + F.linear(attend(q, k, v), w.wo)
    g, u = F.linear(_rms(x, w.ln2, w.eps), w.wgu).chunk(2, -1)
    return x + F.linear(F.silu(g) * u, w.wd)


def sample(logits: torch.Tensor, temp: torch.Tensor, greedy: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k sampling at per-row temperature (greedy rows: argmax), with no host sync."""
    best = logits.argmax(-1)
    vals, idx = (logits / temp.clamp_min(1e-5)).topk(min(k, logits.shape[-1]), dim=-1)
    probs = vals.softmax(-1)
    # Exponential-race sampling (== multinomial) keeps the whole step free of host syncs, so it can be graphed.
    pick = (probs / torch.empty_like(probs).exponential_()).argmax(-1, keepdim=True)
    return torch.where(greedy, best, idx.gather(-1, pick).squeeze(-1))
