"""Packed micro-batches compute what right-padded ones compute, and the token-budget plan covers every utterance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from voicepipe.train.data import SpecialIds, build_sequence, collate, plan_epoch, tokenize_text
from voicepipe.train.loss import compute_loss
from voicepipe.train.packing import (
    disable_packed_attention,
    enable_packed_attention,
    pack,
    plan_packed_epoch,
)


@pytest.fixture(scope="module")
def tiny(tiny_tts_dir: Path):
    from voicepipe.models import load_tts

    tts = load_tts(tiny_tts_dir)
    tts.model.train()
    return tts


def _seqs(tts, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    ids = SpecialIds.from_config(tts.model.config)
    texts = ["hello there", "a much longer sentence about voices and audio", "short", "one two three four five"]
    out = []
    for i in range(n):
        frames = int(torch.randint(2, 14, (1,), generator=g))
        codes = torch.randint(0, 2048, (frames, 16), generator=g)
        out.append(build_sequence(tokenize_text(tts.processor, texts[i % len(texts)]), codes, ids))
    return out


def _loss_and_grads(model, batch, spk, backend="sdpa"):
    model.zero_grad(set_to_none=True)
    p = compute_loss(model, batch, spk, packed_backend=backend)
    # a step-style loss: token means with the counts of this batch
    loss = p.talker_sum / p.talker_count + 0.3 * p.sub_sum / p.sub_count
    loss.backward()
    grads = {n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None}
    return p, grads


def test_packed_equals_padded_loss_and_gradients(tiny) -> None:
    model = tiny.model
    spk = torch.randn(model.config.talker_config.hidden_size, generator=torch.Generator().manual_seed(3))
    seqs = _seqs(tiny, 4, seed=11)
    assert len({s.length for s in seqs}) > 1  # different lengths: padding and packing differ
    ref, ref_g = _loss_and_grads(model, collate(seqs), spk)
    enable_packed_attention(model)
    try:
        packed = pack(seqs, multiple=32)
        assert packed.text_ids.shape[1] % 32 == 0 and packed.n_tokens < packed.text_ids.shape[1]  # has padding
        got, got_g = _loss_and_grads(model, packed, spk)
        # the same utterances in another packing order give the same sums too
        got2, _ = _loss_and_grads(model, pack(seqs[::-1]), spk)
    finally:
        disable_packed_attention(model)
    assert got.talker_count == ref.talker_count and got.sub_count == ref.sub_count
    torch.testing.assert_close(got.talker_sum, ref.talker_sum, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got.sub_sum, ref.sub_sum, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got2.talker_sum, ref.talker_sum, rtol=1e-5, atol=1e-4)
    assert int(got.talker_correct) == int(ref.talker_correct) and int(got.sub_correct) == int(ref.sub_correct)
    assert ref_g.keys() == got_g.keys() and len(ref_g) > 10
    for name, g in ref_g.items():
        torch.testing.assert_close(got_g[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_flex_block_mask_equals_dense_mask(tiny) -> None:
    """FlexAttention's per-document block mask (forward only: torch has no FlexAttention backward on CPU)."""
    model = tiny.model
    spk = torch.randn(model.config.talker_config.hidden_size, generator=torch.Generator().manual_seed(8))
    seqs = _seqs(tiny, 4, seed=12)
    enable_packed_attention(model)
    try:
        with torch.no_grad():
            dense = compute_loss(model, pack(seqs, multiple=64), spk, packed_backend="sdpa")
            flex = compute_loss(model, pack(seqs, multiple=64), spk, packed_backend="flex")
    finally:
        disable_packed_attention(model)
    torch.testing.assert_close(flex.talker_sum, dense.talker_sum, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(flex.sub_sum, dense.sub_sum, rtol=1e-5, atol=1e-4)


def test_cross_document_attention_would_change_the_loss(tiny) -> None:
    """The per-document mask matters: with one document spanning the row, later utterances see earlier ones."""
    model = tiny.model
    spk = torch.randn(model.config.talker_config.hidden_size, generator=torch.Generator().manual_seed(4))
    seqs = _seqs(tiny, 3, seed=5)
    enable_packed_attention(model)
    try:
        packed = pack(seqs)
        with torch.no_grad():
            right = compute_loss(model, packed, spk).talker_sum
            leaky = pack(seqs)
            leaky.doc_ids = torch.zeros_like(leaky.doc_ids)  # one document: attention crosses utterances
            wrong = compute_loss(model, leaky, spk).talker_sum
    finally:
        disable_packed_attention(model)
    assert not torch.allclose(right, wrong, rtol=1e-4)


def test_fallback_attention_serves_unpacked_batches(tiny) -> None:
    model = tiny.model
    spk = torch.zeros(model.config.talker_config.hidden_size)
    seqs = _seqs(tiny, 2, seed=9)
    with torch.no_grad():
        ref = compute_loss(model, collate(seqs), spk).talker_sum
        enable_packed_attention(model)
        try:
            got = compute_loss(model, collate(seqs), spk).talker_sum
        finally:
            disable_packed_attention(model)
    torch.testing.assert_close(got, ref)
    assert model.talker.config._attn_implementation == "sdpa"


def test_compiled_rows_have_one_shape_and_the_same_loss(tiny) -> None:
    """With `compile`, packed rows are padded to the whole row (`TrainConfig.row_multiple`): rows of different fill
    get one shape (no recompile when a step's last row is short), and the padding changes no loss or count."""
    from voicepipe.train.config import TrainConfig

    cfg = TrainConfig(pack=True, micro_batch_tokens=256, compile=True, pack_multiple=32)
    assert cfg.row_multiple == 256
    assert TrainConfig(pack=True, micro_batch_tokens=2048, pack_multiple=32).row_multiple == 32
    model = tiny.model
    spk = torch.randn(model.config.talker_config.hidden_size, generator=torch.Generator().manual_seed(5))
    seqs = _seqs(tiny, 5, seed=2)
    full, short = seqs, seqs[:2]
    assert sum(s.length for s in full) <= 256
    rows = [pack(g, cfg.row_multiple) for g in (full, short)]
    assert {r.text_ids.shape[1] for r in rows} == {256}
    enable_packed_attention(model)
    try:
        with torch.no_grad():
            for group in (full, short):
                a = compute_loss(model, pack(group, 32), spk)
                b = compute_loss(model, pack(group, cfg.row_multiple), spk)
                assert (a.talker_count, a.sub_count) == (b.talker_count, b.sub_count)
                torch.testing.assert_close(a.talker_sum, b.talker_sum, rtol=1e-5, atol=1e-4)
                torch.testing.assert_close(a.sub_sum, b.sub_sum, rtol=1e-5, atol=1e-4)
                # the predictor's frame floor (a compiled predictor never sees a few-frame shape): same loss
                assert cfg.frame_floor == 512 and TrainConfig(pack=True, micro_batch_tokens=256).frame_floor == 0
                c = compute_loss(model, pack(group, cfg.row_multiple), spk, frame_floor=int(a.sub_count) // 15 + 7)
                assert (c.sub_count, c.talker_count) == (a.sub_count, a.talker_count)
                torch.testing.assert_close(c.sub_sum, a.sub_sum, rtol=1e-5, atol=1e-4)
                assert int(c.sub_correct) == int(a.sub_correct)
    finally:
        disable_packed_attention(model)


def test_token_budget_plan_covers_every_utterance_once() -> None:
    g = torch.Generator().manual_seed(0)
    lengths = [int(x) for x in torch.randint(30, 400, (203,), generator=g)]
    for world in (1, 2, 3):
        plan = plan_packed_epoch(lengths, epoch=2, seed=7, world=world, micro_batch_tokens=1024, step_tokens=4000)
        seen = [i for step in plan for r in step for mb in r for i in mb]
        assert sorted(seen) == list(range(len(lengths)))
        for step in plan:
            assert len(step) == world
            assert sum(lengths[i] for r in step for mb in r for i in mb) <= 4000
            for r in step:
                assert all(sum(lengths[i] for i in mb) <= 1024 for mb in r)
        # steps are full: each holds its budget minus less than the next utterance
        sizes = [sum(lengths[i] for r in s for mb in r for i in mb) for s in plan]
        assert min(sizes[:-1]) > 4000 - 400
        again = plan_packed_epoch(lengths, epoch=2, seed=7, world=world, micro_batch_tokens=1024, step_tokens=4000)
        assert again == plan
        other = plan_packed_epoch(lengths, epoch=3, seed=7, world=world, micro_batch_tokens=1024, step_tokens=4000)
        assert other != plan


def test_utterance_count_plan_keeps_the_unpacked_steps() -> None:
    lengths = [50 + (i * 37) % 300 for i in range(45)]
    kw = dict(epoch=1, seed=3, world=2)
    ref = plan_epoch(lengths, per_step=8, batch_size=2, **kw)
    got = plan_packed_epoch(lengths, per_step=8, micro_batch_tokens=2048, **kw)
    assert len(got) == len(ref)
    for a, b in zip(ref, got, strict=True):
        assert sorted(i for r in a for mb in r for i in mb) == sorted(i for r in b for mb in r for i in mb)


# ----------------------------------------------------------------------------------------------------------------
# in the trainer


def test_packed_run_trains_like_the_unpacked_run(structured_corpus_dir: Path, tiny_tts_dir: Path,
                                                 tmp_path: Path) -> None:  # fmt: skip
    """Same optimizer steps (utterance-count plan), packed rows vs padded micro-batches: same losses, same weights."""
    from voicepipe.train import load_config, train

    common = dict(epochs=2, lr=1e-3, batch_size=1, grad_accum=4, export=False, save_state=False, collapse_ratio=None,
                  micro_batch_tokens=100_000)  # fmt: skip
    a = train(structured_corpus_dir, tiny_tts_dir, "tester", tmp_path / "a", load_config("v8", **common),
              progress=False, keep_model=True)  # fmt: skip
    b = train(structured_corpus_dir, tiny_tts_dir, "tester", tmp_path / "b",
              load_config("v8", **common, pack=True, pack_multiple=64, prefetch=2), progress=False,
              keep_model=True)  # fmt: skip
    assert [round(s["loss"], 4) for s in json.loads(a.training_json.read_text())["steps"]] == [
        round(s["loss"], 4) for s in json.loads(b.training_json.read_text())["steps"]]
    sa, sb = a.model.state_dict(), b.model.state_dict()
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=1e-4, atol=1e-5, msg=k)
    assert b.model.talker.config._attn_implementation == "sdpa"  # restored after training
    assert all(e["data_wait_s"] >= 0 for e in b.epochs)


def test_token_budget_run_and_step_guards(structured_corpus_dir: Path, tiny_tts_dir: Path, tmp_path: Path) -> None:
    """step_tokens + warmup_tokens + validation every step: the collapse guard fires at the step it first holds."""
    from voicepipe.train import load_config, train

    corpus_tokens = 4 * 60  # rough: the 4 structured utterances are ~50-80 tokens each
    cfg = load_config("v8", epochs=12, lr=3e-3, pack=True, micro_batch_tokens=4096, step_tokens=corpus_tokens // 3,
                      warmup_tokens=corpus_tokens, collapse_ratio=0.6, patience=50, val_every_steps=1, export=False,
                      save_state=False, divergence_factor=None)  # fmt: skip
    r = train(structured_corpus_dir, tiny_tts_dir, "tester", tmp_path / "run", cfg, progress=False)
    doc = json.loads(r.training_json.read_text())
    assert r.stop_reason == "train_collapse", doc["vals"][-3:]
    vals = doc["vals"]
    assert [v["step"] for v in vals] == list(range(1, len(vals) + 1))  # validated at every step
    assert doc["steps"][-1]["step"] == vals[-1]["step"]  # stopped at the step whose validation tripped
    last = vals[-1]
    assert last["train_loss"] < 0.6 * last["val_loss"]
    assert all(v["train_loss"] >= 0.6 * v["val_loss"] for v in vals[:-1])
    lrs = [s["lr"] for s in doc["steps"]]
    assert lrs[0] < lrs[2] <= 3e-3 and max(lrs) == pytest.approx(3e-3)  # warm-up by tokens, then the full lr


def test_val_guard_rules() -> None:
    from voicepipe.train.config import TrainConfig
    from voicepipe.train.recipe import _TrainerState

    cfg = TrainConfig(patience=2, collapse_ratio=0.5, subtalker_weight=0.5)

    def state(talker: float, sub: float) -> _TrainerState:
        ts = _TrainerState(fingerprint="x")
        ts.add_step([talker * 10, sub * 150, 0, 0], 10, 150, cfg.subtalker_weight)  # token sums and counts
        return ts

    ts = state(2.0, 2.0)  # train loss 2 + 0.5 * 2 = 3
    assert ts.val_guard(dict(val_loss=3.0), cfg) is None
    assert ts.vals[-1]["train_loss"] == pytest.approx(3.0)
    ts.add_step([20.0, 300.0, 0, 0], 10, 150, cfg.subtalker_weight)
    assert ts.val_guard(dict(val_loss=3.1), cfg) is None
    ts.add_step([20.0, 300.0, 0, 0], 10, 150, cfg.subtalker_weight)
    assert ts.val_guard(dict(val_loss=3.2), cfg) == "val_loss_rising"  # 2 rises in a row
    assert state(1.0, 0.0).val_guard(dict(val_loss=2.5), cfg) == "train_collapse"
    assert state(1.0, 0.0).val_guard(dict(val_loss=float("nan")), cfg) == "nonfinite_loss"


@pytest.mark.slow
def test_packed_two_process_ddp_matches_single_process(structured_corpus_dir: Path, tiny_tts_dir: Path,
                                                       tmp_path: Path) -> None:  # fmt: skip
    """Multi-GPU is the same code: packed steps split over 2 gloo processes give the 1-process losses."""
    from tests.test_train_ddp import CONFIG, run_single_and_two_process

    cfg = {**CONFIG, "pack": True, "micro_batch_tokens": 4096, "pack_multiple": 64, "save_state": False}
    doc = run_single_and_two_process(cfg, structured_corpus_dir, tiny_tts_dir, tmp_path, "ddp-packed", 29531)
    assert doc["config"]["pack"] is True


def test_prefetcher_order_errors_and_early_close() -> None:
    from voicepipe.train.packing import Prefetcher

    p = Prefetcher(iter(range(50)), depth=3)
    assert [p.next() for _ in range(50)] == list(range(50))
    with pytest.raises(StopIteration):
        p.next()
    assert p.wait_s >= 0

    def broken():
        yield 1
        raise ValueError("corpus line 7: bad")

    q = Prefetcher(broken(), depth=2)
    assert q.next() == 1
    with pytest.raises(ValueError, match="corpus line 7"):
        q.next()

    r = Prefetcher(iter(range(10_000)), depth=2)  # stopped early (max_steps, a guard): the thread ends
    assert r.next() == 0
    r.close()
    assert not r._thread.is_alive()
