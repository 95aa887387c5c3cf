"""The codec decoder's SnakeBeta activation as one kernel, with the causal convolution's left padding written by it.

The 12 Hz codec's upsampler is four blocks of three residual units (SnakeBeta, dilated causal conv, SnakeBeta,
1x1 conv, residual add) at up to 24 kHz and 1,536 channels. In the package's modules a SnakeBeta is five
elementwise kernels over the whole [windows, channels, samples] tensor (x*alpha, sin, square, times 1/beta, add)
and each causal convolution first copies its input into a left-padded tensor (`F.pad`). At 16 streams a codec
window (16 x 49 frames) is tens of milliseconds of GPU beside the frame steps, mostly these full-tensor passes.
Also, PyTorch adds a cuDNN convolution's bias in a broadcast pass of its own. `snake_pad` reads the input once
(adding the previous convolution's bias) and writes the padded activation once; `bias_residual` adds a unit's last
bias and its input in one pass; `fuse_codec` points the decoder's SnakeBeta modules and residual units at them (in
place; the same weights, the same math).

Numerics: for bf16 inputs the kernel rounds to bf16 wherever the package's eager math stores a bf16 tensor, so the
audio equals the unfused decoder's to bf16 rounding (`benchmarks/codec.py` measures both against fp32). Off CUDA or
without Triton, `snake_pad` runs the package's math (the reference) and `F.pad`.
Hand-written: the package's modules are what is fused, and `torch.compile` of the decoder would compile one graph
per window shape (60 shapes at start-up) or run with dynamic shapes through the transformer's mask code.
"""

from __future__ import annotations

import functools
import types

import torch
import torch.nn.functional as F

from voicepipe.serve.engine.fused import available  # Triton kernels on this device (or its interpreter)

_BT = 1024  # samples per program


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def _snake_pad(x_ptr, a_ptr, b_ptr, bias_ptr, y_ptr, C, T, T_out, PAD, HAS_BIAS: tl.constexpr,
                   ROUND: tl.constexpr, BT: tl.constexpr):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)  # window * C + channel
        c = row % C
        alpha = tl.exp(tl.load(a_ptr + c).to(tl.float32))
        eb = tl.exp(tl.load(b_ptr + c).to(tl.float32))
        if ROUND:  # the eager math's bf16 tensors: exp(alpha), exp(beta), 1 / (exp(beta) + eps)
            alpha = alpha.to(tl.bfloat16).to(tl.float32)
            eb = eb.to(tl.bfloat16).to(tl.float32)
        inv = 1.0 / (eb + 1e-9)
        if ROUND:
            inv = inv.to(tl.bfloat16).to(tl.float32)
        offs = tl.program_id(1) * BT + tl.arange(0, BT)
        ok = offs < T_out
        src = offs - PAD
        inside = ok & (src >= 0)
        x = tl.load(x_ptr + row * T + src, mask=inside, other=0.0).to(tl.float32)
        if HAS_BIAS:  # the convolution's output plus its bias, as a bf16 tensor in the eager math
            x = x + tl.load(bias_ptr + c).to(tl.float32)
            if ROUND:
                x = x.to(tl.bfloat16).to(tl.float32)
        t = x * alpha
        if ROUND:
            t = t.to(tl.bfloat16).to(tl.float32)
        s = tl.sin(t)
        if ROUND:
            s = s.to(tl.bfloat16).to(tl.float32)
        s = s * s
        if ROUND:
            s = s.to(tl.bfloat16).to(tl.float32)
        s = inv * s
        if ROUND:
            s = s.to(tl.bfloat16).to(tl.float32)
        y = tl.where(inside, x + s, 0.0)
        tl.store(y_ptr + row * T_out + offs, y.to(y_ptr.dtype.element_ty), mask=ok)

    @triton.jit
    def _bias_res(y_ptr, bias_ptr, r_ptr, o_ptr, C, T, ROUND: tl.constexpr, BT: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        offs = tl.program_id(1) * BT + tl.arange(0, BT)
        ok = offs < T
        y = tl.load(y_ptr + row * T + offs, mask=ok, other=0.0).to(tl.float32) + tl.load(bias_ptr + row % C)
        if ROUND:
            y = y.to(tl.bfloat16).to(tl.float32)
        y = y + tl.load(r_ptr + row * T + offs, mask=ok, other=0.0).to(tl.float32)
        tl.store(o_ptr + row * T + offs, y.to(o_ptr.dtype.element_ty), mask=ok)

    return _snake_pad, _bias_res


def snake_ref(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """The package's SnakeBeta: x + 1 / (exp(beta) + 1e-9) * sin(x * exp(alpha))^2, per channel of [B, C, T]."""
    a = torch.exp(alpha.unsqueeze(0).unsqueeze(-1))
    b = torch.exp(beta.unsqueeze(0).unsqueeze(-1))
    return x + (1.0 / (b + 0.000000001)) * torch.pow(torch.sin(x * a), 2)


def snake_pad(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, pad: int = 0,
              bias: torch.Tensor | None = None) -> torch.Tensor:
    """SnakeBeta of x [B, C, T] (plus `bias` per channel first: a convolution's, run without it) with `pad` zeros on
    the left of the time axis: [B, C, pad + T]."""
    if not _fits(x, alpha, beta, bias):
        x = x if bias is None else x + bias[:, None]
        y = snake_ref(x, alpha, beta)
        return F.pad(y, (pad, 0)) if pad else y
    B, C, T = x.shape
    x = x.contiguous()
    y = torch.empty(B, C, pad + T, dtype=x.dtype, device=x.device)
    grid = (B * C, -(-(pad + T) // _BT))
    _kernel()[0][grid](x, alpha, beta, x if bias is None else bias, y, C, T, pad + T, pad, HAS_BIAS=bias is not None,
                       ROUND=x.dtype == torch.bfloat16, BT=_BT, num_warps=4)
    return y


def bias_residual(y: torch.Tensor, bias: torch.Tensor, res: torch.Tensor) -> torch.Tensor:
    """(y + bias per channel) + res, rounded in between as the eager math stores it: one pass instead of two."""
    if not _fits(y, bias, bias, None) or res.shape != y.shape or res.dtype != y.dtype:
        return y + bias[:, None] + res
    B, C, T = y.shape
    y, res = y.contiguous(), res.contiguous()
    out = torch.empty_like(y)
    _kernel()[1][(B * C, -(-T // _BT))](y, bias, res, out, C, T, ROUND=y.dtype == torch.bfloat16, BT=_BT,
                                        num_warps=4)
    return out


def _fits(x: torch.Tensor, *params: torch.Tensor | None) -> bool:
    return (available(x.device) and x.dim() == 3 and x.dtype in (torch.bfloat16, torch.float32)
            and all(p is None or p.dtype == x.dtype for p in params))


def _snake_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    return snake_pad(hidden_states, self.alpha, self.beta)


def _unit_forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
    # the package's residual unit: act1, conv1 (k 7, dilated, causal), act2, conv2 (k 1), + input. Here the causal
    # convolutions' left padding is written by the activation before them (stride 1: no right padding), conv1's bias
    # is added by act2's kernel and conv2's with the residual (PyTorch adds a cuDNN convolution's bias in a pass of
    # its own); off CUDA, the package's forward
    if not _fits(hidden_state, self.act1.alpha, self.conv1.conv.weight):
        return type(self).forward(self, hidden_state)
    c1, c2 = self.conv1.conv, self.conv2.conv
    y = F.conv1d(snake_pad(hidden_state, self.act1.alpha, self.act1.beta, self.conv1.padding), c1.weight, None,
                 dilation=c1.dilation)
    y = F.conv1d(snake_pad(y, self.act2.alpha, self.act2.beta, self.conv2.padding, bias=c1.bias), c2.weight, None)
    return bias_residual(y, c2.bias, hidden_state)


def fuse_codec(decoder: torch.nn.Module, on: bool = True) -> torch.nn.Module:
    """Point `decoder`'s SnakeBeta modules and residual units at `snake_pad` (in place; `on=False` gives them the
    package's forward back); returns `decoder`.

    Only residual units whose convolutions have stride 1 are rewritten (no right padding then); others keep the
    package's forward. Off CUDA the rewritten forwards compute the package's math."""
    from qwen_tts.core.tokenizer_12hz import modeling_qwen3_tts_tokenizer_v2 as m

    for mod in decoder.modules():
        if not on:
            mod.__dict__.pop("forward", None)
        elif isinstance(mod, m.SnakeBeta):
            mod.forward = types.MethodType(_snake_forward, mod)
        elif isinstance(mod, m.Qwen3TTSTokenizerV2DecoderDecoderResidualUnit) and all(
                c.stride == 1 and c.conv.groups == 1 and c.conv.bias is not None for c in (mod.conv1, mod.conv2)):
            mod.forward = types.MethodType(_unit_forward, mod)
    return decoder
