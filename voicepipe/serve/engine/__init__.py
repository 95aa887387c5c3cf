"""Latency-first, batching generation engine for Qwen3-TTS 12 Hz models (see `core` for the design).

Layout, by concern:
- `core`: configs, request/event types, prompt building (`TTSEngine.prepare`), the scheduler loop.
- `step`: the frame step (talker, sampling, the code predictor's 15 steps), batched prefill, CUDA graph capture.
- `kernels`: fused-layer weights and the pure per-frame math (RMSNorm, RoPE, decoder layer, sampling).
- `codec`: streaming codec decode on its own thread and stream.
- `gemv`: a Triton matmul for 1-2 rows (the code predictor's small weights; `EngineConfig.small_gemv`).
- `fused`: the code predictor's decoder layer as five Triton kernels for 1-2 rows (`EngineConfig.fused_predictor`),
  and the talker's attention as one a layer (`EngineConfig.fused_talker_attn`).
- `persistent`: the code predictor's whole step as one persistent Triton kernel for 1-2 rows
  (`EngineConfig.persistent_predictor`, off by default; its Triton source in `_persistent_kernels`).

On CUDA, by default, the step's four units are compiled (`torch.compile`, once per process: tens of seconds at the
first `capture()`) and captured as one CUDA graph per (batch, length) bucket, and the codec decodes through CUDA graphs
of padded shapes; `EngineConfig(compile=False, codec_graphs=False)` turns either off.
"""

from voicepipe.serve.engine.codec import SAMPLE_RATE, SAMPLES_PER_FRAME
from voicepipe.serve.engine.core import (
    EngineConfig,
    EngineError,
    Event,
    GenerationConfig,
    Prompt,
    RequestHandle,
    TTSEngine,
)

__all__ = [
    "SAMPLES_PER_FRAME",
    "SAMPLE_RATE",
    "EngineConfig",
    "EngineError",
    "Event",
    "GenerationConfig",
    "Prompt",
    "RequestHandle",
    "TTSEngine",
]
