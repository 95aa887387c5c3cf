"""End-to-end checkpoint evaluation on tiny real-architecture models, a real (espeak-ng) corpus and a local store.

Tiny random models produce no speech (their codec decodes to near-silence), so every tiny checkpoint is invalid:
these tests check that the pipeline measures, reports, flags and refuses honestly. What the metrics say about real
speech is checked in test_evaluate_metrics.py and here in `test_scoring_real_speech_*` (real recordings through the
same scoring code as synthesized samples).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from voicepipe.errors import InputError, VoicepipeError
from voicepipe.evaluate import runner as R
from voicepipe.evaluate.selection import Selection
from voicepipe.evaluate.synth import Synthesis

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")

SR = 24000
TARGET, OTHER = "en-us+m3", "en-gb+f3"
CORPUS_TEXTS = [
    "This is a clean recording of my voice for enrollment purposes.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "We measured every panel twice, once in the morning and once at noon.",
    "Keep an eye on the temperature of the terminals.",
]


def espeak_wav(path: Path, text: str, voice: str) -> np.ndarray:
    """Real speech from espeak-ng, saved as 24 kHz mono wav at `path`."""
    import librosa
    import soundfile as sf

    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), text], check=True)
    wav, _ = librosa.load(raw, sr=SR, mono=True)
    raw.unlink()
    sf.write(path, wav, SR)
    return wav.astype(np.float32)


def make_corpus(root: Path, speaker: str = "alice") -> Path:
    """A corpus dir in the corpus stage's layout: one training clip, three held-out clips, of the target voice."""
    root.mkdir(parents=True)
    rows = []
    for i, text in enumerate(CORPUS_TEXTS):
        clip = root / "clips" / f"{i:03d}.wav"
        clip.parent.mkdir(exist_ok=True)
        espeak_wav(clip, text, TARGET)
        rows.append({"audio": f"clips/{i:03d}.wav", "text": text, "ref_audio": "clips/000.wav"})
    (root / "train_with_codes.jsonl").write_text(json.dumps(rows[0]) + "\n")
    (root / "val_with_codes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[1:]))
    (root / "corpus.json").write_text(json.dumps({"version": "test-1", "speaker": speaker}))
    return root


def zero_weights(ckpt: Path) -> None:
    """Corrupt a checkpoint on purpose: every tensor of model.safetensors set to zero."""
    import torch
    from safetensors.torch import load_file, save_file

    f = ckpt / "model.safetensors"
    save_file({k: torch.zeros_like(v) for k, v in load_file(f).items()}, str(f), metadata={"format": "pt"})


# Greedy decoding makes runs reproducible and makes zeroed weights visible in the codes (all-equal logits pick the
# same token forever); caps keep each sample under ~30 frames on CPU.
FAST = dict(script=["Where did you put the keys?"], max_val_texts=1, asr="pocketsphinx", cap_s_per_char=0.05,
            cap_base_s=1.0, cap_max_frames=30, generate_kwargs={"do_sample": False, "subtalker_dosample": False},
            html_samples=2)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory, tiny_tts_dir: Path, tiny_custom_voice_dir: Path):
    from voicepipe.store import open_store

    root = tmp_path_factory.mktemp("eval")
    corpus = make_corpus(root / "corpus")
    ck = root / "run"
    ck.mkdir()
    shutil.copytree(tiny_custom_voice_dir, ck / "epoch-001")
    shutil.copytree(tiny_custom_voice_dir, ck / "epoch-002")
    zero_weights(ck / "epoch-002")
    shutil.copytree(tiny_custom_voice_dir, ck / "epoch-003")
    (ck / "epoch-003" / "config.json").write_text("{ not json")  # fails to load
    training = {"run": {"base_model": str(tiny_tts_dir), "speaker": "alice"},  # as voicepipe.train writes it
                "epochs": [{"epoch": 1, "train_loss": 10.41, "val_loss": 10.12},
                           {"epoch": 2, "train_loss": 9.87, "val_loss": 9.95},
                           {"epoch": 3, "train_loss": 9.70, "val_loss": 10.03}]}
    (ck / "training.json").write_text(json.dumps(training))
    store = open_store(root / "store")
    result = R.evaluate_checkpoints(ck, corpus, R.EvalConfig(**FAST), reference=root / "missing-v3-epoch-3",
                                    out_dir=root / "out", store=store)
    return result, store, root


def test_every_model_is_evaluated_and_failures_are_rows(evaluated) -> None:
    result, _, _ = evaluated
    names = [r.name for r in result.rows]
    assert names == ["base (zero-shot clone)", "epoch-001", "epoch-002", "epoch-003",
                     "reference (missing-v3-epoch-3)"]
    rows = {r.name: r for r in result.rows}
    assert rows["epoch-003"].status == "failed" and "epoch-003" in rows["epoch-003"].error
    assert rows["reference (missing-v3-epoch-3)"].status == "failed"
    assert "not found" in rows["reference (missing-v3-epoch-3)"].error
    for name in ("base (zero-shot clone)", "epoch-001", "epoch-002"):
        r = rows[name]
        assert r.status == "ok", r.error
        assert r.n_samples == 2 and len(r.samples) == 2
        assert r.wer is not None and r.cer is not None and r.rtf is not None and r.rtf > 0
        assert all((root_wav := result.out_dir / s.wav).is_file() and root_wav.stat().st_size > 44 for s in r.samples)
    assert rows["epoch-001"].val_loss == 10.12 and rows["epoch-002"].epoch == 2


def test_corrupted_checkpoint_is_flagged_invalid_and_never_promoted(evaluated) -> None:
    result, store, _ = evaluated
    rows = {r.name: r for r in result.rows}
    corrupted, healthy = rows["epoch-002"], rows["epoch-001"]
    assert corrupted.n_valid == 0
    assert any(r.startswith("stuck codes") for s in corrupted.samples for r in s.reasons), corrupted.invalid_reasons
    assert not any(r.startswith(("stuck codes", "looping codes")) for s in healthy.samples for r in s.reasons)
    assert "epoch-002" in result.selection.excluded
    assert result.selection.chosen != "epoch-002" and "epoch-002" not in result.selection.ranking
    # tiny random models speak no words (silence or noise, depending on the codec's init): nothing is valid,
    # so nothing is promoted
    speechless = ("silence", "noise-like spectrum", "no speech detected", "no speech modulation")
    assert healthy.n_valid == 0 and set(healthy.invalid_reasons) & set(speechless), healthy.invalid_reasons
    assert result.selection.chosen is None and not result.selection.promotable
    assert result.promoted is None and store.get_ref("voices/alice") is None


def test_reports_hold_every_metric_and_are_stored(evaluated) -> None:
    result, store, _ = evaluated
    md = result.report_md.read_text()
    for col in ("SIM", "ΔSIM vs base", "ΔSIM vs reference", "WER", "CER", "MOS OVRL", "MOS P.808", "RTF", "valid",
                "val loss"):
        assert f" {col} |" in md, col
    for r in result.rows:
        assert r.name in md
    assert "pocketsphinx" in md and "DNSMOS" in md and "Selection rule" in md
    assert "failed: " in md and "stuck codes" in md
    html = result.report_html.read_text()
    assert html.count("data:audio/wav;base64,") == 6  # 2 samples x 3 models that synthesized
    assert "data:image/png;base64," in html and "src='http" not in html and 'src="http' not in html
    assert result.plot_png.stat().st_size > 10_000
    saved = json.loads(result.results_json.read_text())
    assert [r["name"] for r in saved["rows"]] == [r.name for r in result.rows]
    assert set(result.stored) == {"report.md", "report.html", "metrics.png", "results.json"}
    assert store.get_bytes(result.stored["report.md"]["sha256"]) == result.report_md.read_bytes()


def test_scoring_real_speech_through_the_runner(evaluated, tmp_path: Path) -> None:
    """The runner's per-sample scoring on real recordings: valid, transcribed, MOS-scored, and the target's voice
    scores higher speaker similarity against the held-out clips than another voice saying the same words, by more
    than the speaker model's promotion-margin floor (CAM++ embeds espeak's voices close together: 0.90 vs 0.88)."""
    result, _, root = evaluated
    ctx = R.prepare(root / "run", root / "corpus", R.EvalConfig(**FAST), out_dir=tmp_path / "o")
    text = "Please check your connections before you blame the battery."
    scored = {}
    for voice in (TARGET, OTHER):
        wav = espeak_wav(tmp_path / f"{voice}.wav", text, voice)
        s = Synthesis(text=text, wav=wav, sr=SR, codes=None, compute_s=1.0, max_new_tokens=1000)
        scored[voice] = R.score_sample(ctx, "script", s, tmp_path / "o" / f"{voice}.wav")
    t, o = scored[TARGET], scored[OTHER]
    assert t.valid and o.valid, (t.reasons, o.reasons)
    floor = ctx.speaker_model["promotion_margin"]
    assert t.sim is not None and o.sim is not None and t.sim > o.sim + floor, (t.sim, o.sim, floor)
    assert t.mos is not None and t.mos["ovrl"] > 1.5
    row = R.aggregate(R.Row("epoch-009", "checkpoint", str(tmp_path), epoch=9, samples=[t]))
    assert row.n_valid == 1 and row.sim == t.sim and row.wer is not None and row.wer < 1.0 and row.rtf > 0
    assert row.mos_ovrl == t.mos["ovrl"]
    # every metric lands in the report when it could be measured
    res = R.finish(ctx, [row])
    line = next(ln for ln in res.report_md.read_text().splitlines() if ln.startswith("| epoch-009"))
    for value in (f"{row.sim:.3f}", f"{row.wer:.3f}", f"{row.cer:.3f}", f"{row.mos_ovrl:.2f}", f"{row.mos_p808:.2f}",
                  f"{row.rtf:.2f}", "1/1"):
        assert f"| {value} |" in line, (value, line)


def test_promote_stores_the_checkpoint_and_refuses_invalid(evaluated, tiny_custom_voice_dir: Path) -> None:
    _, store, root = evaluated
    good = R.Row("epoch-007", "checkpoint", str(tiny_custom_voice_dir), epoch=7, val_loss=9.1, n_samples=4, n_valid=4,
                 sim=0.81, wer=0.05, cer=0.02, rtf=0.4)
    res = R.EvalResult(rows=[good], selection=Selection("epoch-007", True, "best"), speaker="bob", out_dir=root)
    value = R.promote(store, res)
    ref = store.get_ref("voices/bob")
    assert ref is not None and ref["sha"] == value["sha"]
    assert ref["extra"]["sim"] == 0.81 and ref["extra"]["name"] == "epoch-007"
    back = store.get_dir(ref["sha"], root / "promoted")
    assert (back / "model.safetensors").read_bytes() == (tiny_custom_voice_dir / "model.safetensors").read_bytes()

    bad = R.Row("epoch-008", "checkpoint", str(tiny_custom_voice_dir), n_samples=4, n_valid=0, sim=0.9, wer=0.0)
    res_bad = R.EvalResult(rows=[bad], selection=Selection("epoch-008", True, "forced"), speaker="carol",
                           out_dir=root)
    with pytest.raises(VoicepipeError, match="not valid"):
        R.promote(store, res_bad)
    assert store.get_ref("voices/carol") is None
    assert R.promote(store, R.EvalResult(rows=[good], selection=Selection(None, False, "none"), speaker="dan",
                                         out_dir=root)) is None


def test_bad_inputs_are_clear_errors(evaluated, tmp_path: Path) -> None:
    _, _, root = evaluated
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"checkpoints .*empty: no epoch-NNN checkpoint directories"):
        R.prepare(empty, root / "corpus", R.EvalConfig(**FAST), out_dir=tmp_path / "o1")
    with pytest.raises(InputError, match="no such directory"):
        R.prepare(tmp_path / "nope", root / "corpus", R.EvalConfig(**FAST), out_dir=tmp_path / "o2")
    # a corpus fetched from the store: absolute clip paths of the machine that built it are found under clips/
    moved = tmp_path / "corpus-moved"
    shutil.copytree(root / "corpus", moved)
    rows = [json.loads(ln) for ln in (moved / "val_with_codes.jsonl").read_text().splitlines()]
    for r in rows:
        r["audio"] = f"/nonexistent/build-host/corpus/{r['audio']}"
    (moved / "val_with_codes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(R.prepare(root / "run", moved, R.EvalConfig(**FAST), out_dir=tmp_path / "o4").held_out) == 3
    (moved / "clips" / "002.wav").unlink()
    with pytest.raises(InputError, match=r"corpus clip /nonexistent/build-host/corpus/clips/002.wav: unreadable"):
        R.prepare(root / "run", moved, R.EvalConfig(**FAST), out_dir=tmp_path / "o5")
    no_val = tmp_path / "corpus-no-val"
    shutil.copytree(root / "corpus", no_val)
    (no_val / "val_with_codes.jsonl").unlink()
    with pytest.raises(InputError, match="no val_with_codes.jsonl"):
        R.prepare(root / "run", no_val, R.EvalConfig(**FAST), out_dir=tmp_path / "o3")


def test_cli_reports_bad_input_in_one_line(evaluated, tmp_path: Path) -> None:
    _, _, root = evaluated
    empty = tmp_path / "empty-run"
    empty.mkdir()
    proc = subprocess.run([sys.executable, "-m", "voicepipe.cli", "evaluate", "--checkpoints", str(empty), "--corpus",
                           str(root / "corpus"), "--out", str(tmp_path / "o")], capture_output=True, text=True,
                          env={**__import__("os").environ, "VOICEPIPE_HOME": str(tmp_path / "home")})
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: checkpoints ") and "no epoch-NNN" in last
