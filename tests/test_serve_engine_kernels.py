"""Two speed levers of the engine, pinned on the CPU (their speed is measured on the GPU: `benchmarks/gemv.py`,
`benchmarks/prefill_first.py`, `benchmarks/serve.py`).

- The prefill's attention runs without cuDNN (`EngineConfig.prefill_cudnn`): cuDNN builds a plan for every (batch,
  prompt length) it has not met, 50-90 ms on an H200, which a burst split or a new prompt length paid at run time.
- The code predictor's small matmuls can go through a Triton GEMV (`EngineConfig.small_gemv`): a custom op that
  torch.compile traces as one opaque call for any batch, and that is F.linear wherever Triton cannot run.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from voicepipe.serve.engine import EngineConfig, GenerationConfig, TTSEngine, gemv
from voicepipe.serve.engine import kernels as K

GREEDY = dict(do_sample=False, subtalker_do_sample=False)


@pytest.fixture(scope="module")
def tts(tiny_custom_voice_dir):
    from voicepipe.models import load_tts

    return load_tts(tiny_custom_voice_dir)


@pytest.mark.parametrize("allowed", [False, True], ids=["default-no-cudnn", "cudnn-allowed"])
def test_prefill_attention_runs_without_cudnn_unless_allowed(tts, monkeypatch, allowed):
    eng = TTSEngine(tts, EngineConfig(max_batch=2, max_len=128, prefill_cudnn=allowed))
    if not allowed:
        assert EngineConfig().prefill_cudnn is False
    seen: list[bool] = []
    real = F.scaled_dot_product_attention

    def spy(*a, **kw):
        seen.append(torch.backends.cuda.cudnn_sdp_enabled())
        return real(*a, **kw)

    p = eng.prepare("A prompt of a few words.", speaker="alice")
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    with torch.inference_mode():
        eng._prefill([0, 1], [p, p])
    assert len(seen) == len(eng.t_layers)
    assert seen == [allowed] * len(seen)
    assert torch.backends.cuda.cudnn_sdp_enabled()  # the process-wide setting is left as it was


def test_prefills_of_two_engines_at_once_leave_the_process_wide_flag_as_it_was():
    """sdpa_kernel's flags are process-wide: two engine threads whose prefills overlap (enter A, enter B, exit A,
    exit B) used to leave cuDNN's SDPA off for the process (B restored what it saw on entry: A's "off")."""
    import threading

    from voicepipe.serve.engine.step import _NO_CUDNN_SDPA

    assert torch.backends.cuda.cudnn_sdp_enabled()
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    inside: dict[str, bool] = {}

    def a() -> None:
        with _NO_CUDNN_SDPA:
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def b() -> None:
        a_in.wait(10)
        with _NO_CUDNN_SDPA:
            b_in.set()
            a_out.wait(10)
            inside["b"] = torch.backends.cuda.cudnn_sdp_enabled()  # A has left, B is still prefilling

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert inside == {"b": False}
    assert torch.backends.cuda.cudnn_sdp_enabled()


def test_gemv_op_traces_once_for_any_batch_and_equals_linear():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    cnt = CompileCounter()
    w, b = torch.randn(48, 64), torch.randn(48)
    f = torch.compile(lambda x: gemv._linear_op(x, w, b) * 2, backend=cnt, dynamic=True, fullgraph=True)
    for rows in (2, 3, 5):
        x = torch.randn(rows, 1, 64)
        assert torch.allclose(f(x), 2 * F.linear(x, w, b))
    assert cnt.frame_count == 1
    assert gemv.linear(x, w) is not None and not gemv.available(torch.device("cpu"))


def test_small_gemv_is_off_where_triton_cannot_run(tts):
    eng = TTSEngine(tts, EngineConfig(max_batch=2, max_len=128, small_gemv=True))
    assert eng.small_gemv is False  # CPU: no Triton kernels, the plain F.linear path


def test_small_gemv_routes_the_predictors_small_matmuls_and_keeps_the_codes(tts, monkeypatch):
    """With the GEMV on, exactly the frame step's weights of at most SMALL_GEMV_MAX_WEIGHT elements go through
    `gemv.linear` (here faked by F.linear, as on the CPU), and the greedy codes are those of the plain path. (On the
    1.7B model that is the predictor's in-projection, attention output, MLP down projection and heads.)"""
    gen = GenerationConfig(max_new_tokens=6, min_new_tokens=6, **GREEDY)
    text = "Routing the small matmuls."
    plain = TTSEngine(tts, EngineConfig(max_batch=2, max_len=128, compile=False)).start()
    try:
        ref = plain.generate_codes(plain.prepare(text, speaker="alice"), gen)
    finally:
        plain.stop()
    routed: list[tuple[int, ...]] = []

    def fake(x, w, b=None):
        routed.append(tuple(w.shape))
        return F.linear(x, w, b)

    monkeypatch.setattr(gemv, "available", lambda device: True)
    monkeypatch.setattr(gemv, "linear", fake)
    monkeypatch.setattr(K, "SMALL_GEMV_MAX_WEIGHT", 70_000)  # the tiny model's sizes stand in for 3 M
    eng = TTSEngine(tts, EngineConfig(max_batch=2, max_len=128, compile=False, small_gemv=True)).start()
    try:
        assert eng.small_gemv
        out = eng.generate_codes(eng.prepare(text, speaker="alice"), gen)
    finally:
        eng.stop()
    assert torch.equal(out, ref)
    weights = [t for w in [*eng.t_layers, *eng.p_layers] for t in (w.wqkv, w.wo, w.wgu, w.wd)]
    weights += [h.weight for h in eng.cp.lm_head]
    proj = eng.cp.small_to_mtp_projection
    if isinstance(proj, torch.nn.Linear):
        weights.append(proj.weight)
    small = {tuple(t.shape) for t in weights if t.numel() <= 70_000}
    large = {tuple(t.shape) for t in weights if t.numel() > 70_000} | {tuple(eng.talker.codec_head.weight.shape)}
    assert small and large and set(routed) == small and not large & set(routed)


@pytest.mark.parametrize("first", [1, 2])
def test_every_decode_window_has_a_codec_graph_captured_at_start_up(tts, first):
    """`capture_codec` captures the codec graph of every (batch bucket, frame bucket) in `_codec_keys`; every window
    the scheduler hands the codec, for requests admitted at different steps and ending at different frames (the
    shapes a split burst makes), must fall on one of them, or a request pays a capture at run time. A first chunk
    of one frame (a 1-frame window, no left context) included."""
    from voicepipe.serve.engine.codec import codec_frame_bucket
    from voicepipe.serve.engine.step import _bucket_sizes

    cfg = EngineConfig(max_batch=4, max_len=256, first_chunk_frames=first, chunk_frames=5, left_context_frames=3)
    eng = TTSEngine(tts, cfg).start()
    keys = set(eng._codec_keys())
    shapes: list[tuple[int, int]] = []
    real = eng._decode

    def recording(codes):
        shapes.append((next(s for s in _bucket_sizes(cfg.max_batch) if s >= codes.shape[0]),
                       codec_frame_bucket(codes.shape[1])))
        return real(codes)

    eng._decode = recording
    try:
        prompt = eng.prepare("Windows of every shape.", speaker="alice")
        handles = []
        for lead, frames in ((0, 23), (1, 30), (4, 17), (2, 26)):  # staggered joins, different lengths
            if handles:
                deadline = time.time() + 60
                while len(handles[-1].frames) < lead and time.time() < deadline:
                    time.sleep(0.002)
            handles.append(eng.submit(prompt, GenerationConfig(max_new_tokens=frames, min_new_tokens=frames),
                                      lambda ev: None))
        for h in handles:
            assert h.finished.wait(120)
    finally:
        eng.stop()
    assert shapes and set(shapes) <= keys, sorted(set(shapes) - keys)
    assert min(f for _, f in shapes) == codec_frame_bucket(first)  # the first windows were of `first` frames
    assert max(f for _, f in keys) == codec_frame_bucket(cfg.chunk_frames + cfg.left_context_frames)
    assert eng.capture_codec() == 0.0 and eng.codec_captures == 0  # CPU: no codec graphs, nothing captured
