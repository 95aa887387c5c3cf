"""Pins the trainer's sequence layout and label alignment against the model's own generation code.

The official sft_12hz.py shifts labels twice and feeds the code predictor a hidden state that has already seen its
targets (facts.md; QwenLM/Qwen3-TTS #371, #179, PR #278). These tests compute the expected values independently:
the prompt and per-frame inputs from `Qwen3TTSForConditionalGeneration.generate`, the talker loss by hand from the
logits at explicit positions, and the code predictor's loss through its step-by-step generation API.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from voicepipe.train.data import SpecialIds, build_sequence, collate, tokenize_text
from voicepipe.train.loss import compute_loss, input_embeddings


class _Captured(Exception):
    pass


@pytest.fixture(scope="module")
def tiny(tiny_tts_dir: Path):
    from voicepipe.models import load_tts

    tts = load_tts(tiny_tts_dir)
    tts.model.eval()
    return tts


def _codes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2048, (n, 16), generator=g)


def test_layout_matches_generate(tiny) -> None:
    model, proc = tiny.model, tiny.processor
    text = "hello world, again"
    spk = torch.randn(model.config.talker_config.hidden_size, generator=torch.Generator().manual_seed(1))
    ids = SpecialIds.from_config(model.config)
    codes = _codes(5, 0)
    seq = build_sequence(tokenize_text(proc, text), codes, ids)
    with torch.no_grad():
        emb = input_embeddings(model, collate([seq]), spk)[0]

    captured: dict = {}

    def fake_generate(**kw):
        captured.update(kw)
        raise _Captured

    full = proc(text=f"<|im_start|>assistant\n{text}<|im_end|>\n<|im_start|>assistant\n", return_tensors="pt")
    prompt = {"ref_spk_embedding": [spk], "x_vector_only_mode": [True], "icl_mode": [False], "ref_code": None}
    orig = model.talker.generate
    model.talker.generate = fake_generate
    try:
        with pytest.raises(_Captured):
            model.generate(input_ids=[full["input_ids"]], voice_clone_prompt=prompt, languages=["auto"],
                           non_streaming_mode=True)  # fmt: skip
    finally:
        model.talker.generate = orig
    prefix = captured["inputs_embeds"][0]
    first = int(seq.frame_mask.nonzero()[0])
    assert prefix.shape[0] == first  # generation starts predicting frame 0 from the last prompt position
    torch.testing.assert_close(emb[:first], prefix)
    # each generated frame is fed back as the sum of its 16 codebook embeddings + the tts_pad text embedding
    talker = model.talker
    pad = captured["tts_pad_embed"][0, 0]
    with torch.no_grad():
        for t in range(codes.shape[0]):
            want = talker.get_input_embeddings()(codes[t, :1])[0] + pad
            for i in range(1, 16):
                want = want + talker.code_predictor.get_input_embeddings()[i - 1](codes[t, i : i + 1])[0]
            torch.testing.assert_close(emb[first + t], want)
        eos = talker.get_input_embeddings()(torch.tensor([ids.codec_eos]))[0] + pad
        torch.testing.assert_close(emb[first + codes.shape[0]], eos)


def test_loss_equals_hand_computed_cross_entropy(tiny) -> None:
    model, proc = tiny.model, tiny.processor
    talker, cp = model.talker, model.talker.code_predictor
    ids = SpecialIds.from_config(model.config)
    spk = torch.randn(model.config.talker_config.hidden_size, generator=torch.Generator().manual_seed(2))
    seqs = [
        build_sequence(tokenize_text(proc, "a short one"), _codes(4, 1), ids),
        build_sequence(tokenize_text(proc, "and a rather longer sentence"), _codes(9, 2), ids),
    ]
    with torch.no_grad():
        parts = compute_loss(model, collate(seqs), spk)  # padded batch of two
        talker_terms, sub_terms = [], []
        for seq in seqs:  # each alone, unpadded
            emb = input_embeddings(model, collate([seq]), spk)
            out = talker(inputs_embeds=emb, use_cache=False, output_hidden_states=True)
            logp = out.logits[0].float().log_softmax(-1)
            hidden = out.hidden_states[0][-1][0]
            frames = seq.frame_mask.nonzero().squeeze(-1).tolist()
            codes = seq.codec_ids[frames]
            for q, c in zip(frames, codes[:, 0].tolist(), strict=True):
                talker_terms.append(-logp[q - 1, c])  # position q-1 predicts the token at q
            talker_terms.append(-logp[frames[-1], ids.codec_eos])  # the last frame's position predicts eos
            for q, frame in zip(frames, codes, strict=True):
                # code predictor, exactly as generation runs it: prefill [h_{q-1}, emb(c0)] -> codebook 1, then one
                # codebook at a time through its KV cache
                pre = torch.cat([hidden[q - 1].view(1, 1, -1), talker.get_input_embeddings()(frame[:1].view(1, 1))], 1)
                o = cp(inputs_embeds=pre, use_cache=True)
                sub_terms.append(-F.log_softmax(o.logits[0, -1].float(), -1)[frame[1]])
                for i in range(2, 16):
                    o = cp(input_ids=frame[i - 1].view(1, 1), past_key_values=o.past_key_values,
                           generation_steps=o.generation_steps, use_cache=True)  # fmt: skip
                    sub_terms.append(-F.log_softmax(o.logits[0, -1].float(), -1)[frame[i]])
    assert parts.talker_count == len(talker_terms) and parts.sub_count == len(sub_terms)
    torch.testing.assert_close(parts.talker_sum, torch.stack(talker_terms).sum(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(parts.sub_sum, torch.stack(sub_terms).sum(), rtol=1e-5, atol=1e-4)

    # The official script's double shift scores a different target: the test can tell the two apart.
    with torch.no_grad():
        batch = collate(seqs[:1])
        emb = input_embeddings(model, batch, spk)
        official = talker(inputs_embeds=emb[:, :-1], labels=batch.labels[:, 1:], use_cache=False).loss
    ours = torch.stack(talker_terms[: seqs[0].n_frames + 1]).mean()
    assert abs(float(official) - float(ours)) > 1e-4
