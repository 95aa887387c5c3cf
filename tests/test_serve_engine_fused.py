"""The fused predictor-layer kernels (voicepipe/serve/engine/fused.py) against the unfused math they replace.

The kernels are Triton; they run here in Triton's interpreter (CPU, TRITON_INTERPRET=1) where Triton is installed,
which checks their indexing, masking, RoPE and cache writes exactly as the GPU would run them (the GPU check of the
same comparison is `benchmarks/serve.py --systems numerics`). Without Triton these tests skip. The fallback path
(what the ops run on a CPU without the interpreter) is checked to be the reference math itself."""

from __future__ import annotations

import inspect
import os
import queue

import pytest
import torch

from voicepipe.serve.engine import fused
from voicepipe.serve.engine.kernels import signed_sin

NH, KVH, HD, L, H, FF = 4, 2, 128, 16, 1024, 1024


def _bf(*shape: int, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape) * scale).to(torch.bfloat16)


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 0.02) -> None:
    # 2%: Triton's interpreter truncates fp32 -> bf16 where the GPU rounds to nearest (~1% after a few roundings);
    # a wrong index, mask or rotation is off by tens of percent
    err = (a.float() - b.float()).norm() / b.float().norm()
    assert err < rel, f"relative error {err:.4f}"


@pytest.mark.parametrize("kind,rows", [("dot", 1), ("dot", 2), ("gemv", 1), ("gemv", 2),
                                       ("gemv", 5), ("gemv", 16)])  # 5, 16 rows: the tl.dot forms (`fused_rows`)
def test_rms_linear_glu_and_residual_match_the_unfused_math(interpret, rows, kind, monkeypatch):
    # both matmul forms of the norm ops (the tl.dot one is the default; here with fp32 operands, see `_rms_dot`)
    cfg = ("dot", 32, 256, 4, 3) if kind == "dot" else ("gemv", 8, 512, 4, 1)
    residual = ("gemv", 4, 1024, 4, 1)
    monkeypatch.setattr(fused, "CONFIG", {"rms_linear": cfg, "rms_glu": cfg, "linear_residual": residual})
    torch.manual_seed(0)
    x, ln = _bf(rows, H), _bf(H, scale=0.1) + 1
    w, wgu, wd = _bf(3 * 128, H, scale=0.03), _bf(2 * FF, H, scale=0.03), _bf(H, 2 * FF, scale=0.03)
    assert fused._use(x, H)
    y = fused.rms_linear(x, ln, w, 1e-6)
    ref = torch.nn.functional.linear(fused._ref_rms(x, ln, 1e-6), w)
    assert y.shape == ref.shape and y.dtype == torch.bfloat16
    _close(y, ref)
    a = fused.rms_glu(x, ln, wgu, 1e-6)
    g, u = torch.nn.functional.linear(fused._ref_rms(x, ln, 1e-6), wgu).chunk(2, -1)
    _close(a, torch.nn.functional.silu(g) * u)
    h = _bf(rows, 2 * FF)
    _close(fused.linear_residual(h, wd, x), x + torch.nn.functional.linear(h, wd))
    # the residual is really added: without it the result is far off
    err = (fused.linear_residual(h, wd, x).float() - torch.nn.functional.linear(h, wd).float()).norm()
    assert err > 0.5 * x.float().norm()


@pytest.mark.parametrize("rows,pos", [(1, 2), (2, 9), (3, 15)])
def test_attn_decode_writes_the_cache_at_pos_and_attends_over_0_to_pos(interpret, rows, pos):
    torch.manual_seed(1)
    S = 4
    qkv = _bf(rows, (NH + 2 * KVH) * HD)
    qk_w = _bf(NH + KVH, HD, scale=0.1) + 1
    rot = torch.randn(L, HD)
    cos_t, sin_t = rot.cos().to(torch.bfloat16), signed_sin(rot.sin()).to(torch.bfloat16)
    p = torch.tensor([pos])
    kc, vc = _bf(S, KVH, L, HD), _bf(S, KVH, L, HD)
    kc[:, :, pos + 1 :] = 1e4  # positions after pos hold garbage that must be masked out
    kc2, vc2 = kc.clone(), vc.clone()
    cos, sin = cos_t[pos : pos + 1, None], sin_t[pos : pos + 1, None]
    o = fused.attn_decode(qkv, qk_w, cos, sin, p, kc, vc, 1e-6, NH, KVH)
    ref = fused._ref_attn(qkv, qk_w, cos, sin, p, kc2, vc2, 1e-6, NH, KVH)
    assert o.shape == (rows, NH * HD)
    _close(o, ref)
    _close(kc[:rows, :, pos], kc2[:rows, :, pos])
    assert torch.equal(vc[:rows, :, pos], vc2[:rows, :, pos])
    # nothing else in the caches moved: other positions, and the slots beyond the batch
    keep = torch.ones(S, KVH, L, dtype=torch.bool)
    keep[:rows, :, pos] = False
    assert torch.equal(kc[keep], kc2[keep]) and torch.equal(vc[keep], vc2[keep])


def test_without_triton_or_above_sixteen_rows_the_ops_are_the_reference_math():
    torch.manual_seed(2)
    x, ln, w = _bf(17, H), _bf(H) + 1, _bf(256, H)
    assert not fused._use(x, H)  # 17 rows: the unfused math
    assert torch.equal(fused.rms_linear(x, ln, w, 1e-6), torch.nn.functional.linear(fused._ref_rms(x, ln, 1e-6), w))
    if os.environ.get("TRITON_INTERPRET") != "1":
        assert not fused.available(torch.device("cpu"))


@pytest.fixture(scope="module")
def tts(tiny_custom_voice_dir):
    from voicepipe.models import load_tts

    return load_tts(str(tiny_custom_voice_dir), device="cpu", dtype=torch.float32)


def test_the_fused_predictor_unit_keeps_the_greedy_codes(tts, monkeypatch):
    """A one-stream step with `fused_predictor` on runs `kernels.predictor_next_fused` (the ops' unfused math here:
    fp32 on the CPU) and must give the plain engine's greedy codes: the layer order, residuals and cache positions of
    the fused unit are the unfused one's. Steps above `EngineConfig.fused_rows` keep the plain unit."""
    from voicepipe.serve.engine import EngineConfig, GenerationConfig, TTSEngine
    from voicepipe.serve.engine import kernels as K

    gen = GenerationConfig(max_new_tokens=6, min_new_tokens=6, do_sample=False, subtalker_do_sample=False)
    text = "Fusing the predictor's layers."
    plain = TTSEngine(tts, EngineConfig(max_batch=2, max_len=128, compile=False)).start()
    try:
        assert not plain.fused_predictor  # CPU: no Triton kernels
        ref = plain.generate_codes(plain.prepare(text, speaker="alice"), gen)
    finally:
        plain.stop()
    calls = []
    real = K.predictor_next_fused
    from voicepipe.serve.engine.step import FrameStep

    # the unit is chosen (as on a GPU with Triton); its ops run their unfused math (no Triton here)
    monkeypatch.setattr(FrameStep, "fused_predictor", property(lambda self: True))
    monkeypatch.setattr(K, "predictor_next_fused", lambda *a, **k: calls.append(a[1].shape[0]) or real(*a, **k))
    eng = TTSEngine(tts, EngineConfig(max_batch=2, max_len=128, compile=False, fused_predictor=True)).start()
    try:
        assert eng.fused_predictor
        out = eng.generate_codes(eng.prepare(text, speaker="alice"), gen)
    finally:
        eng.stop()
    assert calls and set(calls) <= {1, 2} and len(calls) % (eng.n_groups - 2) == 0  # 14 per frame step
    assert torch.equal(out, ref)


@pytest.mark.parametrize("split", [1, 2, 3, ((2, 1), (4, 3))])
def test_the_talker_attention_kernel_matches_the_unfused_math_at_each_rows_position(interpret, monkeypatch, split):
    """`attn_decode_rows` (`EngineConfig.fused_talker_attn`): rows at their own positions (the first block, a block
    boundary, the last position of the bucket), the cache walked in blocks of 32 here: the same cache writes as the
    unfused math and the same attention output (bf16 roundings aside); positions past each row's are never read.
    Split over 2 or 3 runs of blocks (`ROWS_ATTN_SPLIT`; at 3 the last run lies past every row's position, and a
    table gives these 4 rows 3), the runs joined: the same output."""
    monkeypatch.setattr(fused, "ROWS_ATTN_BLOCK", 32)
    monkeypatch.setattr(fused, "ROWS_ATTN_SPLIT", split)
    torch.manual_seed(5)
    b, S, Lmax, L = 4, 6, 160, 128
    qkv = _bf(b, (NH + 2 * KVH) * HD)
    qk_w = _bf(NH + KVH, HD, scale=0.1) + 1
    pos = torch.tensor([3, 32, 77, 127])
    ang = torch.randn(b, HD)
    cos, sin = ang.cos().to(torch.bfloat16), signed_sin(ang.sin()).to(torch.bfloat16)
    kc0, vc0 = _bf(S, KVH, Lmax, HD), _bf(S, KVH, Lmax, HD)
    rkc, rvc = kc0.clone(), vc0.clone()
    ref = fused._ref_attn_rows(qkv, qk_w, cos, sin, pos, rkc, rvc, L, 1e-6, NH, KVH)
    kc0[:, :, L:] = float("nan")  # beyond the bucket: never read
    for i, p in enumerate(pos.tolist()):
        kc0[i, :, p:L] = float("nan")  # the row's position (written first) and beyond it: never read
        vc0[i, :, p:L] = float("nan")
    kc, vc = kc0.clone(), vc0.clone()
    out = fused.attn_decode_rows(qkv, qk_w, cos, sin, pos, kc, vc, L, 1e-6, NH, KVH)
    assert torch.isfinite(out).all()
    _close(out, ref)
    for i, p in enumerate(pos.tolist()):
        _close(kc[i, :, p], rkc[i, :, p])
        assert torch.equal(vc[i, :, p], rvc[i, :, p])
        assert kc[i, :, p + 1 :].isnan().all() and kc[i, :, :p].equal(rkc[i, :, :p])  # nothing else written
    assert kc[b:, :, :L].equal(rkc[b:, :, :L]) and vc[b:, :, :L].equal(rvc[b:, :, :L])  # other slots untouched
    # the fallback (no Triton) is the reference math itself
    monkeypatch.delenv("TRITON_INTERPRET")
    kc2, vc2 = kc0.clone().nan_to_num(), vc0.clone().nan_to_num()
    torch.testing.assert_close(fused.attn_decode_rows(qkv, qk_w, cos, sin, pos, kc2, vc2, L, 1e-6, NH, KVH), ref)


@pytest.mark.parametrize("V,k", [(2048, 50), (3072, 50), (300, 7)])
def test_the_sampling_kernel_draws_the_codes_topk_and_the_race_draw(interpret, V, k):
    """The one-kernel top-k (threshold search, no sort) pairs each of the k best with its place in topk's order,
    so with the same exponential draws it picks exactly the code the unfused math picks; greedy rows take argmax."""
    torch.manual_seed(3)
    b = 24
    logits = torch.randn(b, V) * 3
    logits[:, : V // 3] = float("-inf")  # suppressed codes (the talker's control codes)
    temp = torch.rand(b, 1) * 1.5 + 0.05
    greedy = torch.arange(b) % 5 == 0
    expo = torch.empty(b, k).exponential_()
    out = fused.sample_topk(logits, temp, greedy, expo)
    ref = fused._ref_sample(logits, temp, greedy, expo)
    assert out.dtype == torch.long and torch.equal(out, ref)
    assert torch.equal(out[greedy], logits.argmax(-1)[greedy])
    # the draws decide: other draws pick other codes in most sampled rows
    other = fused.sample_topk(logits, temp, greedy, torch.empty(b, k).exponential_())
    assert (other != out)[~greedy].float().mean() > 0.3


@pytest.mark.parametrize("key16", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_both_forms_of_the_threshold_search_find_the_same_top_k_through_ties(interpret, monkeypatch, key16, dtype):
    """The sampler's threshold search, on bf16 logits' 16-bit order or on the fp32 order of logits / temp, picks
    the top k that a stable sort picks (ties by index) where most logits tie: scores on a 0.5 grid, rows all
    negative, a third of a row at -inf, temperatures 0.05-1.65."""
    monkeypatch.setattr(fused, "SAMPLE_KEY16", key16)
    torch.manual_seed(5)
    for V, k in ((2048, 50), (3072, 50), (300, 7)):
        b = 24
        logits = (torch.randn(b, V) * 4).round() / 2
        logits[1::4] -= 30
        logits[2::4, : V // 3] = float("-inf")
        logits = logits.to(dtype)
        temp = torch.rand(b, 1) * 1.6 + 0.05
        greedy = torch.arange(b) % 7 == 0
        expo = torch.empty(b, k).exponential_()
        vals, idx = (logits.float() / temp).sort(dim=-1, descending=True, stable=True)
        pick = (vals[:, :k].softmax(-1) / expo).argmax(-1, keepdim=True)
        ref = torch.where(greedy, logits.float().argmax(-1), idx[:, :k].gather(-1, pick).squeeze(-1))
        assert torch.equal(fused.sample_topk(logits, temp, greedy, expo), ref)
        if V == 2048:  # a tie at the threshold in most rows: the test is about ties
            kth = (logits.float() / temp).sort(dim=-1, descending=True).values[:, k - 1 : k + 1]
            assert (kth[:, 0] == kth[:, 1]).float().mean() > 0.5


def test_fused_sampling_draws_what_the_unfused_sampler_draws(tts, monkeypatch):
    """With `fused_sample` on, the step draws its exponential race numbers as before ([b, k] fp32, in the same order)
    and `fused.sample_topk` decides (here its unfused math: no Triton on the CPU): a sampled request with one seed gets
    the plain engine's codes. Drawing them differently (another shape or order) would change the codes."""
    from voicepipe.serve.engine import EngineConfig, GenerationConfig, TTSEngine
    from voicepipe.serve.engine.step import FrameStep

    gen = GenerationConfig(max_new_tokens=8, min_new_tokens=8, do_sample=True, subtalker_do_sample=True)
    text = "Sampling in one kernel."

    def run(seed: int = 7, **cfg) -> torch.Tensor:
        eng = TTSEngine(tts, EngineConfig(max_batch=2, max_len=128, compile=False, decode_thread=False, **cfg)).start()
        try:
            prompt = eng.prepare(text, speaker="alice")
            torch.manual_seed(seed)
            return eng.generate_codes(prompt, gen)
        finally:
            eng.stop()

    ref = run()
    calls = []
    real = fused.sample_topk
    monkeypatch.setattr(FrameStep, "fused_sample", property(lambda self: True))
    monkeypatch.setattr(fused, "sample_topk", lambda *a: calls.append(a[3].shape) or real(*a))
    out = run()
    # every code of every frame (and of the one step launched before the last frame's codes were read)
    assert len(calls) in (16 * 8, 16 * 9)
    assert torch.equal(out, ref)
    assert not torch.equal(run(seed=8), ref)  # the seed matters: the test can fail


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_sampling_kernel_with_the_embedding_row_picks_the_same_codes(interpret, dtype):
    """`fused.sample_embed` (`EngineConfig.fused_head`): the same codes as `sample_topk` with the same draws, bf16
    logits read as their fp32 values, and each code's row of the embedding table written beside it."""
    torch.manual_seed(4)
    b, V, k, E = 16, 2048, 50, 256
    logits = (torch.randn(b, V) * 3).to(dtype)
    temp = torch.rand(b, 1) + 0.5
    greedy = torch.arange(b) % 4 == 0
    expo = torch.empty(b, k).exponential_()
    emb_w = _bf(V, E)
    code, emb = fused.sample_embed(logits, temp, greedy, expo, emb_w)
    ref = fused._ref_sample(logits.float(), temp, greedy, expo)
    assert torch.equal(code, ref)
    assert emb.dtype == torch.bfloat16 and torch.equal(emb, torch.nn.functional.embedding(ref, emb_w))


def _fused_predictor_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fused predictor step, its head and its sampler on (on the CPU: their unfused math)."""
    from voicepipe.serve.engine.step import FrameStep

    for name in ("fused_predictor", "fused_sample", "fused_head"):
        monkeypatch.setattr(FrameStep, name, property(lambda self: True))


def _engine_codes(tts, text: str, gen, seed: int | None = None, **cfg) -> torch.Tensor:
    from voicepipe.serve.engine import EngineConfig, TTSEngine

    eng = TTSEngine(tts, EngineConfig(max_batch=2, max_len=128, compile=False, decode_thread=False, **cfg)).start()
    try:
        prompt = eng.prepare(text, speaker="alice")
        if seed is not None:
            torch.manual_seed(seed)
        return eng.generate_codes(prompt, gen)
    finally:
        eng.stop()


def test_the_fused_head_draws_what_the_unfused_step_draws(tts, monkeypatch):
    """With `fused_head` the fused predictor step's norm + head is one `rms_linear` and its sampling + embedding one
    `sample_embed`, the race's draws made as before: a sampled request with one seed gets the plain engine's codes."""
    from voicepipe.serve.engine import GenerationConfig

    gen = GenerationConfig(max_new_tokens=8, min_new_tokens=8, do_sample=True, subtalker_do_sample=True)
    text = "The head and the sampler fused."
    ref = _engine_codes(tts, text, gen, seed=7)
    calls = []
    real = fused.sample_embed
    _fused_predictor_on(monkeypatch)
    monkeypatch.setattr(fused, "sample_embed", lambda *a: calls.append(a[0].shape) or real(*a))
    out = _engine_codes(tts, text, gen, seed=7)
    assert len(calls) in (14 * 8, 14 * 9)  # 14 predictor steps per frame (+ the one launched before the end)
    assert torch.equal(out, ref)
    assert not torch.equal(_engine_codes(tts, text, gen, seed=8), ref)


def _codes_at_once(tts, texts: list[str], **cfg) -> list[torch.Tensor]:  # noqa: ANN001 - the tts fixture
    """Greedy codes (6 frames) of `texts` submitted at once to a two-slot engine with `cfg`: one step runs every
    slot (unless a stream is admitted or finishes alone)."""
    from voicepipe.serve.engine import EngineConfig, GenerationConfig, TTSEngine

    gen = GenerationConfig(max_new_tokens=6, min_new_tokens=6, do_sample=False, subtalker_do_sample=False)
    eng = TTSEngine(tts, EngineConfig(max_batch=2, max_len=128, compile=False, **cfg)).start()
    try:
        qs = [queue.Queue() for _ in texts]
        reqs = [eng.submit(eng.prepare(t, speaker="alice"), gen, q.put) for t, q in zip(texts, qs, strict=True)]
        for q in qs:
            while (ev := q.get(timeout=300)).kind not in ("done", "error"):
                pass
            assert ev.kind == "done", ev.message
        return [torch.stack(r.frames) for r in reqs]
    finally:
        eng.stop()


def test_the_fused_talker_attention_keeps_the_greedy_codes(tts, monkeypatch):
    """`EngineConfig.fused_talker_attn`: every talker layer's attention goes through `fused.attn_decode_rows` (its
    unfused math here: fp32 on the CPU), with each slot's own position, RoPE rows and cache; two streams of
    different prompt lengths (so different positions) keep the plain engine's greedy codes."""
    from voicepipe.serve.engine.step import FrameStep

    texts = ["The talker's attention, fused.", "A longer second prompt, so the two slots sit at other positions."]
    ref = _codes_at_once(tts, texts)
    calls = []
    real = fused.attn_decode_rows
    monkeypatch.setattr(FrameStep, "fused_talker_attn", property(lambda self: True))
    monkeypatch.setattr(fused, "attn_decode_rows", lambda *a: calls.append(a[4].tolist()) or real(*a))
    out = _codes_at_once(tts, texts, fused_talker_attn=True)
    assert calls and all(len(c) in (1, 2) for c in calls)
    assert any(len(c) == 2 and c[0] != c[1] for c in calls)  # one step ran both slots, at different positions
    assert all(torch.equal(a, b) for a, b in zip(out, ref, strict=True))


def test_the_fused_talker_matmuls_run_at_one_row_only_and_keep_the_greedy_codes(tts, monkeypatch):
    """`EngineConfig.fused_talker_mm`: a one-row step runs every talker layer's matmuls through the fused ops
    (norm + q/k/v, output projection + residual, norm + gate/up + SiLU, down projection + residual; their unfused
    math here: fp32 on the CPU) and keeps the plain engine's greedy codes; a two-row step keeps the plain layer."""
    from voicepipe.serve.engine import kernels as K
    from voicepipe.serve.engine.step import FrameStep

    texts = ["The talker's matmuls, fused.", "A second stream, so a step runs two rows."]
    H = tts.model.talker.config.hidden_size
    ref_one, ref_two = _codes_at_once(tts, texts[:1]), _codes_at_once(tts, texts)
    rows, layers = [], []  # rows of each fused gate/up call at the talker's width; of each talker layer call
    real, real_layer = fused.rms_glu, K.talker_layer
    monkeypatch.setattr(FrameStep, "fused_talker_attn", property(lambda self: True))
    monkeypatch.setattr(fused, "rms_glu", lambda x, *a: (rows.append(x.shape[0]) if x.shape[1] == H else None)
                        or real(x, *a))
    monkeypatch.setattr(K, "talker_layer", lambda w, x, *a: layers.append(x.shape[0]) or real_layer(w, x, *a))
    one = _codes_at_once(tts, texts[:1], fused_talker_attn=True, fused_talker_mm=True)
    assert layers and set(layers) == {1} and len(rows) == len(layers)  # every layer of every one-row step
    assert all(torch.equal(a, b) for a, b in zip(one, ref_one, strict=True))
    rows.clear()
    layers.clear()
    two = _codes_at_once(tts, texts, fused_talker_attn=True, fused_talker_mm=True)
    assert all(torch.equal(a, b) for a, b in zip(two, ref_two, strict=True))
    # the two-row steps ran the plain layer; only one-row steps (a stream admitted or finishing alone) the fused ops
    assert 2 in layers and len(rows) == layers.count(1)


@pytest.mark.parametrize("rows,split", [(5, 2), (16, 4)])
def test_split_k_matmul_residual_adds_every_split_once_and_leaves_its_counters_at_zero(interpret, rows, split):
    """`linear_residual(..., split=s)` above 2 rows (`EngineConfig.fused_split_k`): K split over s programs per
    output tile, the last to arrive adds the partials in split order and the residual; the counters it used are zero
    again afterwards (the next call, or the next graph replay, starts from them)."""
    torch.manual_seed(5)
    K, N = 4 * 1024, 96  # 96 columns: 3 tiles of 32
    x, w, r = _bf(rows, K), _bf(N, K, scale=0.03), _bf(rows, N)
    ref = r.float() + torch.nn.functional.linear(x.float(), w.float())
    one = fused.linear_residual(x, w, r, 1)
    out = fused.linear_residual(x, w, r, split)
    _close(out, ref)
    _close(out, one, rel=0.01)
    assert not fused._COUNTERS[x.device].any()
    assert torch.equal(fused.linear_residual(x, w, r, split), out)  # deterministic


def test_pdl_launches_only_on_gpus_that_have_it(monkeypatch):
    """Programmatic dependent launch (`fused.PDL`): by default on for compute capability 9.0+ only (the kernels'
    `griddepcontrol` is sm_90 PTX) with a Triton that has it, never in Triton's interpreter; the switch forces it
    either way."""
    cap, gdc = {"v": (8, 0)}, {"v": True}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cap["v"])
    monkeypatch.setattr(fused, "_gdc_available", lambda: gdc["v"])
    monkeypatch.setattr(fused, "_interpreted", lambda: False)
    gpu, on = torch.device("cuda", 0), {"PDL": True, "launch_pdl": True}
    monkeypatch.setattr(fused, "PDL", None)
    fused._has_pdl.cache_clear()
    try:
        assert fused._pdl(gpu) == {} and fused._pdl(torch.device("cpu")) == {}
        cap["v"] = (9, 0)
        fused._has_pdl.cache_clear()
        assert fused._pdl(gpu) == on
        gdc["v"] = False  # an older Triton without `griddepcontrol` in its language
        fused._has_pdl.cache_clear()
        assert fused._pdl(gpu) == {}
        gdc["v"] = True
        fused._has_pdl.cache_clear()
        assert fused._pdl(gpu, ok=False) == {}  # a kernel form without the switch (the GEMV form of the norm ops)
        monkeypatch.setattr(fused, "PDL", False)
        assert fused._pdl(gpu) == {}
        monkeypatch.setattr(fused, "PDL", True)
        monkeypatch.setattr(fused, "_interpreted", lambda: True)
        assert fused._pdl(gpu) == {}
    finally:
        fused._has_pdl.cache_clear()


@pytest.mark.parametrize("rows,split", [(1, 2), (2, 4)])
def test_split_k_norm_ops_match_the_unsplit_ones_and_leave_their_counters_at_zero(interpret, rows, split,
                                                                                  monkeypatch):
    """`fused.RMS_SPLIT` (the norm ops' tl.dot form at 1-2 rows, K split over programs): every program normalizes
    with the whole row's rms; the last split of a tile adds the partials in split order, then SiLU·up for the gate /
    up op; the same outputs as the unsplit kernel to bf16 rounding, deterministic, counters zero again after."""
    monkeypatch.setattr(fused, "CONFIG", {**fused.CONFIG, "rms_linear": ("dot", 32, 256, 4, 3),
                                          "rms_glu": ("dot", 32, 256, 4, 3)})
    torch.manual_seed(6)
    x, ln = _bf(rows, H), _bf(H, scale=0.1) + 1
    w, wgu = _bf(96, H, scale=0.03), _bf(2 * 96, H, scale=0.03)  # 3 tiles of 32 columns
    monkeypatch.setattr(fused, "RMS_SPLIT", 1)
    one = fused.rms_linear(x, ln, w, 1e-6), fused.rms_glu(x, ln, wgu, 1e-6)
    monkeypatch.setattr(fused, "RMS_SPLIT", split)
    out = fused.rms_linear(x, ln, w, 1e-6), fused.rms_glu(x, ln, wgu, 1e-6)
    g, u = torch.nn.functional.linear(fused._ref_rms(x, ln, 1e-6), wgu).chunk(2, -1)
    _close(out[0], torch.nn.functional.linear(fused._ref_rms(x, ln, 1e-6), w))
    _close(out[1], torch.nn.functional.silu(g) * u)
    for a, b in zip(out, one, strict=True):
        _close(a, b, rel=0.01)
    assert not fused._COUNTERS[x.device].any()
    again = fused.rms_linear(x, ln, w, 1e-6), fused.rms_glu(x, ln, wgu, 1e-6)
    assert all(torch.equal(a, b) for a, b in zip(again, out, strict=True))  # deterministic


@pytest.mark.parametrize("rows,K", [(1, 1024), (2, 3072), (2, 4096), (2, 5 * 1024)])
def test_the_gemv_matmul_residual_with_its_weights_preloaded_is_the_looped_one(interpret, rows, K, monkeypatch):
    """`fused.GEMV_PRELOAD`: the matmul + residual op's GEMV form (1-2 rows) loads all of its weight tiles (up to 4
    of `BK`) before it waits for the kernel before it; the products are summed in the same order as the K loop's, so
    the output is the loop's bit for bit. Above 4 tiles it keeps the loop."""
    monkeypatch.setattr(fused, "CONFIG", {**fused.CONFIG, "linear_residual": ("gemv", 4, 1024, 4, 1)})
    torch.manual_seed(8)
    x, w, r = _bf(rows, K), _bf(40, K, scale=0.03), _bf(rows, 40)  # 40 columns: 10 tiles of 4
    monkeypatch.setattr(fused, "GEMV_PRELOAD", False)
    looped = fused.linear_residual(x, w, r)
    monkeypatch.setattr(fused, "GEMV_PRELOAD", True)
    out = fused.linear_residual(x, w, r)
    _close(out, r.float() + torch.nn.functional.linear(x.float(), w.float()))
    assert torch.equal(out, looped)
    wrong = w.clone()
    wrong[:, -1024:] = 0  # the last tile is really read: without it the result moves
    assert not torch.equal(fused.linear_residual(x, wrong, r), out)


@pytest.mark.parametrize("rows,split,K", [(1, 1, 1024), (2, 2, 1024), (2, 2, 2048), (2, 4, 1024), (5, 2, 1024)])
def test_the_norm_ops_with_their_weights_preloaded_are_the_looped_ones(interpret, rows, split, K, monkeypatch):
    """`fused.RMS_PRELOAD`: the norm ops' tl.dot form unrolls its rms pass and loads its program's second weight
    tile (of gate and up too) before the wait; the sums are the loop's in the same order, so the outputs are the
    loop's bit for bit (split 4 at K 1024: one tile a program, only the rms pass changes; 5 rows: no split)."""
    monkeypatch.setattr(fused, "CONFIG", {**fused.CONFIG, "rms_linear": ("dot", 32, 256, 4, 3),
                                          "rms_glu": ("dot", 32, 256, 4, 3)})
    monkeypatch.setattr(fused, "RMS_SPLIT", split)
    monkeypatch.setattr(fused, "RMS_SPLIT_MAX_K", K)  # split at K 2048 too (the default splits K <= 1024 only)
    torch.manual_seed(9)
    x, ln = _bf(rows, K), _bf(K, scale=0.1) + 1
    w, wgu = _bf(64, K, scale=0.03), _bf(2 * 64, K, scale=0.03)

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        return fused.rms_linear(x, ln, w, 1e-6), fused.rms_glu(x, ln, wgu, 1e-6)

    monkeypatch.setattr(fused, "RMS_PRELOAD", False)
    looped = both()
    monkeypatch.setattr(fused, "RMS_PRELOAD", True)
    out = both()
    g, u = torch.nn.functional.linear(fused._ref_rms(x, ln, 1e-6), wgu).chunk(2, -1)
    _close(out[0], torch.nn.functional.linear(fused._ref_rms(x, ln, 1e-6), w))
    _close(out[1], torch.nn.functional.silu(g) * u, rel=0.04)  # the interpreter's truncations, twice (see _close)
    assert all(torch.equal(a, b) for a, b in zip(out, looped, strict=True))
    assert split == 1 or not fused._COUNTERS[x.device].any()


def test_the_norm_ops_split_k_only_up_to_rms_split_max_k(interpret, monkeypatch):
    """`fused.RMS_SPLIT_MAX_K`: at 1-2 rows the norm ops split K (`RMS_SPLIT`) for the predictor's K 1024, not for
    the talker's 2048 (`EngineConfig.fused_talker_mm`), which has output tiles enough unsplit: no partials there."""
    monkeypatch.setattr(fused, "CONFIG", {**fused.CONFIG, "rms_linear": ("dot", 32, 256, 4, 3)})
    monkeypatch.setattr(fused, "RMS_SPLIT", 2)
    launched = []
    real = fused._split_counters
    monkeypatch.setattr(fused, "_split_counters", lambda dev, split, *a: launched.append(split) or real(dev, split, *a))
    for K in (1024, 2048):
        fused.rms_linear(_bf(1, K), _bf(K, scale=0.1) + 1, _bf(64, K, scale=0.03), 1e-6)
    assert launched == [2, 1]


@pytest.mark.parametrize("rows,pos", [(1, 2), (2, 15)])
def test_the_attention_with_its_cache_preloaded_is_the_plain_one(interpret, rows, pos, monkeypatch):
    """`fused.ATTN_PRELOAD`: the predictor's attention reads its position, RoPE rows and the cache below pos before
    it waits for the kernel before it (then the q/k/v row): the same output and caches, bit for bit."""
    torch.manual_seed(3)
    qkv, qk_w = _bf(rows, (NH + 2 * KVH) * HD), _bf(NH + KVH, HD, scale=0.1) + 1
    rot = torch.randn(L, HD)
    cos = rot.cos().to(torch.bfloat16)[pos : pos + 1, None]
    sin = signed_sin(rot.sin()).to(torch.bfloat16)[pos : pos + 1, None]
    caches = _bf(4, KVH, L, HD), _bf(4, KVH, L, HD)
    out = {}
    for pre in (False, True):
        monkeypatch.setattr(fused, "ATTN_PRELOAD", pre)
        kc, vc = (c.clone() for c in caches)
        out[pre] = fused.attn_decode(qkv, qk_w, cos, sin, torch.tensor([pos]), kc, vc, 1e-6, NH, KVH), kc, vc
    assert all(torch.equal(a, b) for a, b in zip(out[True], out[False], strict=True))
    assert not torch.equal(out[True][1], caches[0])  # the cache write happened


@pytest.mark.parametrize("rows,split", [(5, 2), (16, 4)])
def test_the_split_k_matmul_residual_with_its_alignment_hint_is_the_plain_one(interpret, rows, split, monkeypatch):
    """`fused.SPLIT_ALIGN`: the matmul + residual op's split-K form is told that each split's K range starts at a
    multiple of its K tile (a compiler hint for wider loads): the same output, bit for bit."""
    torch.manual_seed(10)
    K, N = 4 * 1024, 96
    x, w, r = _bf(rows, K), _bf(N, K, scale=0.03), _bf(rows, N)
    monkeypatch.setattr(fused, "SPLIT_ALIGN", False)
    plain = fused.linear_residual(x, w, r, split)
    monkeypatch.setattr(fused, "SPLIT_ALIGN", True)
    out = fused.linear_residual(x, w, r, split)
    _close(out, r.float() + torch.nn.functional.linear(x.float(), w.float()))
    assert torch.equal(out, plain) and not fused._COUNTERS[x.device].any()


@pytest.mark.parametrize("fused_path", [False, True])
def test_the_projected_tables_give_the_same_codes_without_a_projection_a_step(tts, monkeypatch, fused_path):
    """`EngineConfig.proj_table`: a one-row step samples the predictor's codes with each embedding table extended
    by its rows' input projection, so its steps run no projection of their own; a sampled request with one seed
    gets the plain engine's codes (the plain predictor step and the fused one, here its unfused math), and a
    request beside another (two rows) keeps the tables out."""
    from voicepipe.serve.engine import GenerationConfig, kernels

    if fused_path:
        _fused_predictor_on(monkeypatch)
    gen = GenerationConfig(max_new_tokens=8, min_new_tokens=8, do_sample=True, subtalker_do_sample=True)
    text = "Each code's projection read from its table."
    ref = _engine_codes(tts, text, gen, seed=7, proj_table=False)
    proj_w = tts.model.talker.code_predictor.small_to_mtp_projection.weight
    real, projected = kernels.linear, []
    monkeypatch.setattr(kernels, "linear", lambda x, w, *a, **k: (projected.append(x.shape[0]) if w is proj_w
                                                                    else None) or real(x, w, *a, **k))
    out = _engine_codes(tts, text, gen, seed=7, proj_table=True)
    V = tts.model.talker.code_predictor.model.codec_embedding[0].weight.shape[0]
    # the tables' rows (15 tables of V codes, one row a call), then only predictor_first's [hidden, code 0] a frame
    assert projected[: 15 * V] == [1] * (15 * V) and len(projected) - 15 * V in (8, 9)
    assert torch.equal(out, ref)
    assert not torch.equal(_engine_codes(tts, text, gen, seed=8, proj_table=True), ref)  # the seed matters
    # two rows: the tables stay out (their rows are one-row projections), the codes as the plain engine's
    texts = ["Two at once, the first.", "Two at once, and the second one."]
    assert all(torch.equal(a, b) for a, b in zip(_codes_at_once(tts, texts, proj_table=True),
                                                 _codes_at_once(tts, texts, proj_table=False), strict=True))


@pytest.mark.parametrize("fused_path", [False, True])
def test_the_draws_made_before_the_layers_give_the_same_codes(tts, monkeypatch, fused_path):
    """`EngineConfig.early_draws`: the step makes its 16 sampling calls' exponential draws before the talker's
    layers, in the calls' order; a sampled request with one seed gets the codes of the draws made where each call
    samples (the plain predictor step and the fused one, here its unfused math), and no sampling call draws."""
    from voicepipe.serve.engine import GenerationConfig, kernels

    if fused_path:
        _fused_predictor_on(monkeypatch)
    gen = GenerationConfig(max_new_tokens=8, min_new_tokens=8, do_sample=True, subtalker_do_sample=True)
    text = "Every draw made before the layers."
    ref = _engine_codes(tts, text, gen, seed=7, early_draws=False)
    real, where = kernels.draws, []
    monkeypatch.setattr(kernels, "draws", lambda *a: where.append(
        any(f.function == "_draw_early" for f in inspect.stack(0)[1:4])) or real(*a))
    out = _engine_codes(tts, text, gen, seed=7, early_draws=True)
    assert all(where) and len(where) in (16 * 8, 16 * 9)
    assert torch.equal(out, ref)
    assert not torch.equal(_engine_codes(tts, text, gen, seed=8, early_draws=True), ref)  # the seed matters
