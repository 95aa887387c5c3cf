"""The speed paths of the engine, checked on the CPU: compiled frame-step units and the codec's padded decode.

On CUDA the engine compiles its four per-frame units (`torch.compile`, inductor) and replays the codec decoder as
CUDA graphs of padded shapes; their speed is measured in `benchmarks/serve.py`. Here: the compiled units trace as
whole graphs, once per unit for every batch bucket and length, and give the package's greedy codes; and the codec
is causal, so a window padded on the right to its graph's shape decodes to the same samples.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from voicepipe.serve.engine import EngineConfig, GenerationConfig, TTSEngine
from voicepipe.serve.engine.codec import SAMPLES_PER_FRAME, codec_frame_bucket

GREEDY = dict(do_sample=False, subtalker_do_sample=False)


def test_codec_frame_buckets_cover_every_window():
    assert [codec_frame_bucket(n) for n in (1, 2, 3, 5, 8, 9, 16, 17, 28, 37)] == [1, 2, 4, 8, 8, 16, 16, 24, 32, 40]
    assert all(codec_frame_bucket(n) >= n for n in range(1, 200))


def test_codec_right_padding_keeps_the_samples(tiny_custom_voice_dir):
    from voicepipe.models import load_tts

    dec = load_tts(tiny_custom_voice_dir).model.speech_tokenizer.model.decoder
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for n in (2, 5, 27):
            codes = torch.randint(0, 2048, (2, 16, n), generator=g)
            padded = torch.cat([codes, torch.zeros(2, 16, codec_frame_bucket(n) - n, dtype=torch.long)], -1)
            ref, out = dec(codes), dec(padded)[..., : n * SAMPLES_PER_FRAME]
            assert ref.shape[-1] == n * SAMPLES_PER_FRAME
            assert torch.allclose(out, ref, atol=1e-5), f"padding changed the samples of a {n}-frame window"


@pytest.mark.parametrize("first", [1, 2])
def test_streamed_audio_is_the_whole_decode_whatever_the_first_chunk(tiny_custom_voice_dir, first):
    """A stream's chunks (the first of `first_chunk_frames` frames, then 1-2, 2, 4, 8, 16, ... with left context)
    put together are the samples of one decode of all its codes: the codec is causal, and every window of a 30-frame
    request starts at frame 0 (left context 25). So a first chunk of one frame changes when audio leaves, not what."""
    from voicepipe.models import load_tts

    tts = load_tts(tiny_custom_voice_dir)
    eng = TTSEngine(tts, EngineConfig(max_batch=2, max_len=256, first_chunk_frames=first)).start()
    chunks: list = []
    try:
        prompt = eng.prepare("Audio in chunks.", speaker="alice")
        torch.manual_seed(0)
        req = eng.submit(prompt, GenerationConfig(max_new_tokens=30, min_new_tokens=30),
                         lambda ev: chunks.append(ev.audio) if ev.kind == "audio" else None)
        assert req.finished.wait(120)
    finally:
        eng.stop()
    codes = torch.stack(req.frames)
    assert len(codes) == 30
    with torch.inference_mode():
        whole = eng._decode(codes[None])[0].numpy()
    sizes = [len(c) // SAMPLES_PER_FRAME for c in chunks]
    assert sizes[0] == first and sum(sizes) == 30, sizes
    assert sizes == ([1, 1, 2, 4, 8, 14] if first == 1 else [2, 2, 4, 8, 14]), sizes
    streamed, whole = torch.from_numpy(np.concatenate(chunks)), torch.from_numpy(whole)
    assert torch.allclose(streamed, whole, atol=1e-5), (streamed - whole).abs().max()


def test_a_prefill_padded_to_its_graph_bucket_gives_the_same_cache_and_codes(tiny_custom_voice_dir):
    """Prefill graphs pad a batch to its (batch, length) bucket: 3 prompts become 4 rows (the last prompt twice, to
    its own slot) of a multiple of 32 tokens (`prefill_len_step` 32, for more padding than the default's 8). On the
    CPU the same padding runs eagerly (`prefill_graphs` forced on): the K/V of every real position, the slots' state
    and the greedy codes are those of the unpadded prefill."""
    from voicepipe.models import load_tts

    tts = load_tts(tiny_custom_voice_dir)
    plain = TTSEngine(tts, EngineConfig(max_batch=4, max_len=256))
    padded = TTSEngine(load_tts(tiny_custom_voice_dir), EngineConfig(max_batch=4, max_len=256, prefill_graphs=True,
                                                                     prefill_len_step=32))
    assert not plain.prefill_graphed and padded.prefill_graphed
    texts = ["Hi.", "A longer sentence, with more words in it.", "Thank you!"]
    lens = []
    for eng in (plain, padded):
        prompts = [eng.prepare(t, speaker="alice") for t in texts]
        lens = [p.embeds.shape[0] - 1 for p in prompts]
        b, t = padded._prefill_key(3, max(lens))
        assert b == 4 and t % 32 == 0 and t > max(lens)
        with torch.inference_mode():
            eng._prefill([2, 0, 3], prompts)
    for kp, kq in zip(plain.kc + plain.vc, padded.kc + padded.vc, strict=True):
        for slot, n in zip([2, 0, 3], lens, strict=True):
            assert torch.allclose(kp[slot, :, :n], kq[slot, :, :n], atol=1e-5)
        assert not kq[1].any()  # the free slot is untouched
    for name in ("pos", "next_emb", "text_buf", "text_len", "gen_step"):
        assert torch.equal(getattr(plain, name), getattr(padded, name)), name
    gen = GenerationConfig(max_new_tokens=8, min_new_tokens=8, **GREEDY)
    for eng in (plain, padded):
        eng.start()
    try:
        hp = [plain.submit(plain.prepare(t, speaker="alice"), gen, lambda ev: None) for t in texts]
        hq = [padded.submit(padded.prepare(t, speaker="alice"), gen, lambda ev: None) for t in texts]
        for a, b in zip(hp, hq, strict=True):
            assert a.finished.wait(60) and b.finished.wait(60)
            assert torch.equal(torch.stack(a.frames), torch.stack(b.frames))
    finally:
        plain.stop()
        padded.stop()


def test_compiled_prefill_layers_give_the_eager_prefill(tiny_custom_voice_dir):
    """`prefill_compile`: the prefill layer's two halves around its attention as compiled units (here the "eager"
    backend: dynamo's trace with no graph break, run as traced) write the same K/V and slot state as the plain
    layers, over two batch sizes and lengths (one trace, then one with the batch and length dynamic)."""
    from voicepipe.models import load_tts

    tts = load_tts(tiny_custom_voice_dir)
    plain = TTSEngine(tts, EngineConfig(max_batch=4, max_len=256))
    comp = TTSEngine(load_tts(tiny_custom_voice_dir), EngineConfig(max_batch=4, max_len=256, compile="eager",
                                                                   prefill_compile=True))
    assert comp.prefill_compiled and not plain.prefill_compiled
    for texts in (["Hi.", "A longer sentence, with more words in it."], ["One.", "Two, then.", "And three!"]):
        slots = list(range(len(texts)))
        for eng in (plain, comp):
            with torch.inference_mode():
                eng._prefill(slots, [eng.prepare(t, speaker="alice") for t in texts])
        for a, b in zip(plain.kc + plain.vc, comp.kc + comp.vc, strict=True):
            assert torch.equal(a, b)
        for name in ("pos", "next_emb", "text_buf", "text_len"):
            assert torch.equal(getattr(plain, name), getattr(comp, name)), name
    assert "_prefill_units_" in comp.__dict__ and "_prefill_units_" not in plain.__dict__
    # a failed frame-step compile (its units fall back to eager) leaves the prefill's setting, and its graphs, alone
    comp.cfg.prefill_compile = None  # the default: with compiled units
    comp._compile_failed = True
    assert not comp.compiled and comp.prefill_compiled


@pytest.mark.slow
def test_compiled_units_trace_once_and_keep_greedy_parity(tiny_custom_voice_dir):
    """aot_eager runs the same traced graphs (functionalised cache writes included) as inductor, without codegen; the
    compiled prefill layers too (greedy codes equal to the eager engine's)."""
    from torch._dynamo.utils import counters

    from voicepipe.models import load_tts

    torch._dynamo.reset()
    tts = load_tts(tiny_custom_voice_dir)
    eager = TTSEngine(load_tts(tiny_custom_voice_dir), EngineConfig(max_batch=4, max_len=256)).start()
    comp = TTSEngine(tts, EngineConfig(max_batch=4, max_len=256, compile="aot_eager", one_row_bucket=False)).start()
    try:
        assert comp.compiled and comp._batch_buckets() == [2, 4]
        gen = GenerationConfig(max_new_tokens=10, min_new_tokens=10, **GREEDY)
        texts = ["Compiled, one request.", "A second request, batched.", "And a third."]
        before = counters["stats"]["unique_graphs"]
        p = comp.prepare(texts[0], speaker="alice")
        assert torch.equal(comp.generate_codes(p, gen), eager.generate_codes(eager.prepare(texts[0], speaker="alice"),
                                                                            gen))
        with comp._step_lock:  # three requests at once: batch bucket 4
            hs = [comp.submit(comp.prepare(t, speaker="alice"), gen, lambda ev: None) for t in texts]
        for h, t in zip(hs, texts, strict=True):
            assert h.finished.wait(300)
            assert torch.equal(torch.stack(h.frames), eager.generate_codes(eager.prepare(t, speaker="alice"), gen))
        # four units, each traced once for batch buckets 2 and 4 and every cache length; and the prefill's two
        # halves (`prefill_compile`, on with compiled units), traced for one prompt, then with batch and length dynamic
        assert counters["stats"]["unique_graphs"] - before == 4 + 2 * 2
        # a second engine of the same shape (another voice) reuses them: its closures hold plain numbers only
        other = TTSEngine(load_tts(tiny_custom_voice_dir),
                          EngineConfig(max_batch=4, max_len=256, compile="aot_eager", one_row_bucket=False)).start()
        try:
            assert torch.equal(other.generate_codes(other.prepare(texts[0], speaker="alice"), gen),
                               comp.generate_codes(p, gen))
        finally:
            other.stop()
        assert counters["stats"]["unique_graphs"] - before == 4 + 2 * 2
    finally:
        comp.stop()
        eager.stop()
        torch._dynamo.reset()


def test_a_one_row_bucket_traces_the_units_once_more_and_keeps_the_codes(tiny_custom_voice_dir):
    """`one_row_bucket` (the default): with compiled units, one stream steps in a batch bucket of its own (the units
    traced again, the batch specialised to 1) instead of the 2-row one, with the eager engine's greedy codes; two
    streams still share the 2-row bucket."""
    from torch._dynamo.utils import counters

    from voicepipe.models import load_tts

    torch._dynamo.reset()
    eager = TTSEngine(load_tts(tiny_custom_voice_dir), EngineConfig(max_batch=4, max_len=256)).start()
    one = TTSEngine(load_tts(tiny_custom_voice_dir),
                    EngineConfig(max_batch=4, max_len=256, compile="aot_eager")).start()  # one_row_bucket: the default
    try:
        assert one.compiled and one._batch_buckets() == [1, 2, 4] and one._pick(1, 10)[0] == 1
        gen = GenerationConfig(max_new_tokens=10, min_new_tokens=10, **GREEDY)
        texts = ["One request alone.", "Then two at once.", "The second of the two."]
        before = counters["stats"]["unique_graphs"]
        want = [eager.generate_codes(eager.prepare(t, speaker="alice"), gen) for t in texts]
        assert torch.equal(one.generate_codes(one.prepare(texts[0], speaker="alice"), gen), want[0])
        traced_alone = counters["stats"]["unique_graphs"] - before
        with one._step_lock:  # two requests at once: batch bucket 2
            hs = [one.submit(one.prepare(t, speaker="alice"), gen, lambda ev: None) for t in texts[1:]]
        for h, w in zip(hs, want[1:], strict=True):
            assert h.finished.wait(300)
            assert torch.equal(torch.stack(h.frames), w)
        # the four step units traced for the batch of 1 and then again for the symbolic batch
        assert traced_alone >= 4 and counters["stats"]["unique_graphs"] - before >= traced_alone + 4
    finally:
        one.stop()
        eager.stop()
        torch._dynamo.reset()


def test_prefill_length_buckets_follow_the_step(tiny_custom_voice_dir):
    """`prefill_len_step`: the graphed prompt lengths are its multiples up to 256, then of 64 up to 512, then of 128,
    ending at max_len; a prompt pads to the first bucket that holds it."""
    from voicepipe.models import load_tts

    tts = load_tts(tiny_custom_voice_dir)
    for step in (8, 32):
        eng = TTSEngine(tts, EngineConfig(max_batch=16, max_len=1024, prefill_graphs=True, prefill_len_step=step))
        lengths = eng._prefill_len_buckets()
        assert lengths == [*range(step, 257, step), 320, 384, 448, 512, 640, 768, 896, 1024]
        assert eng._prefill_key(16, 101) == (16, 104 if step == 8 else 128)
        assert eng._prefill_key(3, 256) == (4, 256) and eng._prefill_key(1, 257) == (1, 320)
        assert all(b * t <= eng.cfg.prefill_graph_tokens for b, t in eng._prefill_keys())
