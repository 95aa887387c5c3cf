"""End-to-end recipe on the tiny real-architecture model: overfit, export, reload offline, generate, speaker slot."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from voicepipe.train import load_config, train


@pytest.fixture(scope="session")
def overfit_run(structured_corpus_dir: Path, tiny_tts_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("overfit") / "run"
    cfg = load_config("v8", epochs=8, lr=3e-3, batch_size=1, grad_accum=1, collapse_ratio=None, patience=8,
                      keep_best=2, divergence_factor=None)  # fmt: skip
    result = train(structured_corpus_dir, tiny_tts_dir, "Tester", out, cfg, progress=False, resume=False)
    return result


def test_overfit_loss_halves_and_codes_are_learned(overfit_run, structured_corpus_dir: Path) -> None:
    r = overfit_run
    assert r.status == "completed", r.stop_reason
    doc = json.loads(r.training_json.read_text())
    first = doc["steps"][0]["loss"]
    last = r.epochs[-1]["train_loss"]
    assert last <= 0.5 * first, (first, last)
    # teacher-forced accuracy on the training utterances vs the majority-code baseline
    rows = [json.loads(x) for x in (structured_corpus_dir / "train_with_codes.jsonl").read_text().splitlines()]
    c0 = Counter(f[0] for r_ in rows for f in r_["audio_codes"])
    majority0 = c0.most_common(1)[0][1] / sum(c0.values())
    assert r.epochs[-1]["train_acc0"] > max(0.5, 2 * majority0), (r.epochs[-1]["train_acc0"], majority0)
    assert r.epochs[-1]["train_acc_sub"] > 50 / 2048  # chance is 1/2048
    assert r.epochs[-1]["train_acc0"] > r.epochs[0]["train_acc0"]


def test_training_json_png_and_best_k(overfit_run) -> None:
    r = overfit_run
    doc = json.loads(r.training_json.read_text())
    assert doc["run"]["status"] == "completed" and doc["run"]["corpus_version"] == "test-corpus-1"
    assert len(doc["run"]["base_sha256"]) == 64
    assert doc["config"]["lr"] == 3e-3
    assert len(doc["epochs"]) == 8 and all("val_loss" in e and "train_loss" in e for e in doc["epochs"])
    assert all(np.isfinite(s["grad_norm"]) for s in doc["steps"])
    assert (r.out_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"
    kept = sorted(p.name for p in r.out_dir.glob("epoch-*"))
    best = sorted(doc["epochs"], key=lambda e: e["val_loss"])[:2]
    assert kept == sorted(e["checkpoint"] for e in best)
    assert [b["checkpoint"] for b in doc["best"]] == [e["checkpoint"] for e in best]


def test_checkpoint_reloads_offline_generates_and_decodes(overfit_run) -> None:
    from voicepipe.models import load_tts

    ckpt = overfit_run.out_dir / overfit_run.best[0]["checkpoint"]
    cfg = json.loads((ckpt / "config.json").read_text())
    assert "_name_or_path" not in cfg or not str(cfg["_name_or_path"]).startswith("Qwen/")
    assert cfg["tts_model_type"] == "custom_voice" and cfg["talker_config"]["spk_id"] == {"tester": 3000}
    tts = load_tts(ckpt)  # Qwen3TTSModel.from_pretrained(local dir), hub off (conftest)
    torch.manual_seed(0)
    wavs, sr = tts.generate_custom_voice(text="Hello there.", speaker="Tester", language="auto", max_new_tokens=6)
    assert sr == 24000 and wavs[0].ndim == 1 and wavs[0].size > 0 and np.isfinite(wavs[0]).all()


def test_speaker_slot_holds_fp32_mean_of_reference_clips(overfit_run, structured_corpus_dir: Path,
                                                          tiny_tts_dir: Path) -> None:  # fmt: skip
    from safetensors.torch import load_file

    from voicepipe.audio import load_audio
    from voicepipe.models import load_tts

    base = load_tts(tiny_tts_dir).model
    rows = [json.loads(x) for x in (structured_corpus_dir / "train_with_codes.jsonl").read_text().splitlines()]
    clips = sorted({r["ref_audio"] for r in rows})
    embs = [base.extract_speaker_embedding(load_audio(structured_corpus_dir / c, 24000), 24000) for c in clips]
    expected = torch.stack([e.double() for e in embs]).mean(0).float()
    for b in overfit_run.best:
        w = load_file(str(overfit_run.out_dir / b["checkpoint"] / "model.safetensors"))
        assert not any(k.startswith("speaker_encoder.") for k in w)
        torch.testing.assert_close(w["talker.model.codec_embedding.weight"][3000], expected, rtol=1e-5, atol=1e-6)


def test_micro_batching_does_not_change_the_gradient(structured_corpus_dir: Path, tiny_tts_dir: Path,
                                                     tmp_path: Path) -> None:  # fmt: skip
    """fast.yaml's claim: 4 micro-batches of 1 (v8-style accumulation) == 1 length-sorted micro-batch of 4."""
    common = dict(epochs=2, lr=1e-3, batch_size=1, grad_accum=4, export=False, save_state=False, collapse_ratio=None)
    a = train(structured_corpus_dir, tiny_tts_dir, "tester", tmp_path / "a", load_config("v8", **common),
              progress=False, keep_model=True)  # fmt: skip
    b = train(structured_corpus_dir, tiny_tts_dir, "tester", tmp_path / "b",
              load_config("v8", **common, micro_batch_tokens=100_000), progress=False, keep_model=True)  # fmt: skip
    sa, sb = a.model.state_dict(), b.model.state_dict()
    changed = 0
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=1e-4, atol=1e-5, msg=k)
        changed += not torch.equal(sa[k], load_state(tiny_tts_dir)[k])
    assert changed > 10  # the runs trained (weights moved), and moved the same way
    assert [round(e["train_loss"], 4) for e in a.epochs] == [round(e["train_loss"], 4) for e in b.epochs]


_BASE: dict = {}


def load_state(base: Path) -> dict:
    if base not in _BASE:
        from safetensors.torch import load_file

        _BASE[base] = load_file(str(base / "model.safetensors"))
    return _BASE[base]
