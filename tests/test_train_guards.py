"""Bad inputs fail before any training starts; guardrails stop a run that diverges."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from voicepipe.errors import InputError, VoicepipeError
from voicepipe.train import load_config, train

TRAIN = "train_with_codes.jsonl"


def _rewrite(corpus: Path, name: str, fn) -> None:
    rows = [json.loads(x) for x in (corpus / name).read_text().splitlines() if x.strip()]
    rows = fn(rows)
    (corpus / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def _drop_codes(rows):
    rows[1].pop("audio_codes")
    return rows


def _eight_codebooks(rows):
    rows[2]["audio_codes"] = [f[:8] for f in rows[2]["audio_codes"]]
    return rows


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda c: _rewrite(c, TRAIN, _drop_codes), r"train_with_codes.jsonl:2: missing 'audio_codes'"),
        (lambda c: _rewrite(c, TRAIN, _eight_codebooks), r":3: 'audio_codes' frames have 8 codebooks"),
        (lambda c: (c / TRAIN).write_text(""), r"train_with_codes.jsonl has no utterances"),
        (lambda c: (c / "val_with_codes.jsonl").unlink(), r"val_with_codes.jsonl is missing"),
    ],
    ids=["missing-codes", "wrong-codebooks", "empty-corpus", "no-val-split"],
)
def test_bad_corpus_fails_before_training(make_corpus, tiny_tts_dir: Path, tmp_path: Path, damage, message) -> None:
    corpus = make_corpus()
    damage(corpus)
    out = tmp_path / "run"
    with pytest.raises(InputError, match=message) as err:
        train(corpus, tiny_tts_dir, "tester", out, load_config("v8", epochs=1), progress=False)
    assert "\n" not in str(err.value)
    assert not out.exists()  # nothing was trained or written


def test_base_that_is_not_qwen3_tts_fails_before_training(make_corpus, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus-model"
    bogus.mkdir()
    (bogus / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    with pytest.raises(InputError, match=r"model_type is 'whisper', not a Qwen3-TTS model"):
        train(make_corpus(), bogus, "tester", tmp_path / "run", load_config("v8", epochs=1), progress=False)
    with pytest.raises(VoicepipeError, match="no such file or directory"):
        train(make_corpus(), tmp_path / "nowhere", "tester", tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_cli_reports_bad_input_in_one_line(make_corpus, tiny_tts_dir: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    corpus = make_corpus()
    _rewrite(corpus, "train_with_codes.jsonl", _drop_codes)
    p = subprocess.run([sys.executable, "-m", "voicepipe.cli", "train", "--corpus", str(corpus), "--base",
                        str(tiny_tts_dir), "--speaker", "tester", "--out", str(tmp_path / "o"), "--no-upload"],
                       capture_output=True, text=True, cwd=Path(__file__).parents[1])  # fmt: skip
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.strip().splitlines()[-1].startswith("error: corpus ")
    assert "missing 'audio_codes'" in p.stderr


def test_huge_learning_rate_trips_the_guard(structured_corpus_dir: Path, tiny_tts_dir: Path, tmp_path: Path) -> None:
    cfg = load_config("v8", epochs=3, lr=50.0, batch_size=1, grad_accum=1, grad_clip=1e9)
    r = train(structured_corpus_dir, tiny_tts_dir, "tester", tmp_path / "run", cfg, progress=False)
    assert r.status == "stopped" and r.stop_reason in {"nonfinite_loss", "diverged", "train_collapse"}
    doc = json.loads(r.training_json.read_text())
    assert doc["run"]["status"] == "stopped" and doc["run"]["stop_reason"] == r.stop_reason
    assert len(doc["steps"]) < 12  # stopped early, not after all 3 epochs x 4 steps
    assert (r.out_dir / "loss.png").exists()


def test_collapse_guard_marks_the_v5_failure(structured_corpus_dir: Path, tiny_tts_dir: Path, tmp_path: Path) -> None:
    # an lr that overfits 4 utterances fast: training loss falls far below validation -> stop, like v5
    cfg = load_config("v8", epochs=12, lr=3e-3, batch_size=1, grad_accum=1, collapse_ratio=0.6, patience=12,
                      export=False, save_state=False)  # fmt: skip
    r = train(structured_corpus_dir, tiny_tts_dir, "tester", tmp_path / "run", cfg, progress=False)
    assert r.stop_reason == "train_collapse", [(e["train_loss"], e["val_loss"]) for e in r.epochs]
    last = r.epochs[-1]
    assert last["train_loss"] < 0.6 * last["val_loss"] and len(r.epochs) < 12


def test_manual_gc_runs_the_epochs_without_the_automatic_collector_and_restores_it(
        structured_corpus_dir: Path, tiny_tts_dir: Path, tmp_path: Path) -> None:
    """`gc_every_steps`: Python's cyclic collector is off while steps run (collections at known steps instead), and
    on again afterwards, also when the run stops on a guard."""
    import gc

    seen: list[bool] = []
    cfg = load_config("v8", epochs=1, batch_size=1, grad_accum=1, gc_every_steps=2, export=False, save_state=False,
                      max_steps=3)  # fmt: skip
    r = train(structured_corpus_dir, tiny_tts_dir, "tester", tmp_path / "run", cfg, progress=False,
              on_progress=lambda p: seen.append(gc.isenabled()))
    assert r.training_json.exists() and seen == [False, False, False] and gc.isenabled()
    bad = load_config("v8", epochs=3, lr=50.0, batch_size=1, grad_accum=1, grad_clip=1e9, gc_every_steps=1)
    assert train(structured_corpus_dir, tiny_tts_dir, "tester", tmp_path / "bad", bad, progress=False).stop_reason
    assert gc.isenabled()
