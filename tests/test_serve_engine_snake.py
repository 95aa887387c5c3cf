"""The codec decoder's fused SnakeBeta + causal padding (voicepipe/serve/engine/snake.py) against the package's modules.

The kernel is Triton; it runs here in Triton's interpreter (TRITON_INTERPRET=1) where Triton is installed (it checks
the indexing, the padding and the per-channel parameters as the GPU runs them; `benchmarks/codec.py` compares the
GPU decoder against fp32). Without Triton those tests skip. The rewritten modules' fallback (what a CPU runs) must be
the package's own math: a tiny codec decodes to the same samples with and without `fuse_codec`."""

from __future__ import annotations

import copy

import pytest
import torch

from voicepipe.serve.engine import snake


def _decoder(tiny_tts_dir):
    from voicepipe.models import load_codec

    return load_codec(str(tiny_tts_dir), device="cpu").model.decoder.eval()


def test_the_rewritten_decoder_falls_back_to_the_package_math(tiny_tts_dir):
    from qwen_tts.core.tokenizer_12hz import modeling_qwen3_tts_tokenizer_v2 as m

    dec = _decoder(tiny_tts_dir)
    fused = snake.fuse_codec(copy.deepcopy(dec))
    units = [x for x in fused.modules() if isinstance(x, m.Qwen3TTSTokenizerV2DecoderDecoderResidualUnit)]
    assert units and all(u.forward.__func__ is snake._unit_forward for u in units)
    torch.manual_seed(0)
    codes = torch.randint(0, 2048, (2, 16, 7))
    with torch.inference_mode():
        assert torch.equal(fused(codes), dec(codes))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("pad", "with_bias"), [(0, False), (6, True), (54, False)])
def test_snake_pad_matches_the_package_activation_and_pads_with_zeros(interpret, dtype, pad, with_bias):
    torch.manual_seed(0)
    C, T = 5, 1500  # T over one program's 1024 samples: a second, masked program per row
    x = (torch.randn(3, C, T) * 2).to(dtype)
    alpha, beta = (torch.randn(C) * 0.3).to(dtype), (torch.randn(C) * 0.3).to(dtype)
    bias = torch.randn(C).to(dtype) if with_bias else None
    y = snake.snake_pad(x, alpha, beta, pad, bias=bias)
    ref = torch.nn.functional.pad(snake.snake_ref(x if bias is None else x + bias[:, None], alpha, beta), (pad, 0))
    assert y.shape == (3, C, pad + T) and y.dtype == dtype
    assert torch.all(y[..., :pad] == 0)
    err = ((y.float() - ref.float()).norm() / ref.float().norm()).item()
    # fp32: summation-free, so only sin's implementation differs; bf16: the interpreter truncates where the GPU
    # rounds (each of the five rounding points), ~1 %; a wrong channel, offset or pad is off by tens of percent
    assert err < (1e-5 if dtype == torch.float32 else 0.02), err


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bias_residual_adds_the_bias_per_channel_and_the_residual(interpret, dtype):
    torch.manual_seed(0)
    y, res = torch.randn(2, 3, 1100).to(dtype), torch.randn(2, 3, 1100).to(dtype)
    bias = torch.tensor([1.0, -2.0, 3.0]).to(dtype)
    out = snake.bias_residual(y, bias, res)
    ref = (y + bias[:, None]) + res
    assert out.dtype == dtype and ((out.float() - ref.float()).norm() / ref.float().norm()).item() < 0.01


def test_a_fused_tiny_decoder_decodes_as_the_package_does(interpret, tiny_tts_dir):
    dec = _decoder(tiny_tts_dir)
    fused = snake.fuse_codec(copy.deepcopy(dec))
    torch.manual_seed(1)
    codes = torch.randint(0, 2048, (2, 16, 5))
    with torch.inference_mode():
        a, b = fused(codes), dec(codes)
    assert ((a - b).norm() / b.norm()).item() < 1e-5


def test_fuse_codec_off_gives_the_package_forwards_back(tiny_tts_dir):
    from qwen_tts.core.tokenizer_12hz import modeling_qwen3_tts_tokenizer_v2 as m

    dec = snake.fuse_codec(_decoder(tiny_tts_dir))
    snake.fuse_codec(dec, on=False)
    assert not any("forward" in x.__dict__ for x in dec.modules())
    unit = next(x for x in dec.modules() if isinstance(x, m.Qwen3TTSTokenizerV2DecoderDecoderResidualUnit))
    assert unit.forward.__func__ is m.Qwen3TTSTokenizerV2DecoderDecoderResidualUnit.forward


def test_an_engine_over_a_model_without_a_codec_builds_and_fuses_nothing(tiny_custom_voice_dir):
    """Codes-only engines (the serve benchmark's fp32 reference for its numerics check) have no speech tokenizer."""
    import types

    from voicepipe.models import load_tts
    from voicepipe.serve.engine import EngineConfig, TTSEngine

    tts = load_tts(str(tiny_custom_voice_dir), device="cpu", dtype=torch.float32)
    m = types.SimpleNamespace(talker=tts.model.talker, config=tts.model.config, speech_tokenizer=None)
    eng = TTSEngine(types.SimpleNamespace(model=m, processor=tts.processor),
                    EngineConfig(max_batch=2, max_len=64, compile=False, codec_fused=True))
    assert eng.codec_fused is False
