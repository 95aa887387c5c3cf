"""What each evaluation metric costs per sample on this machine, and how well it separates real speech from junk.

Real speech = espeak-ng voices (the target en-us+m3, another voice en-gb+f3); junk = white noise, silence.
Prints a markdown table; run: `.venv/bin/python benchmarks/evaluate.py`.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SR = 24000
HELD_OUT = [
    "This is a clean recording of my voice for enrollment purposes.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "We measured every panel twice, once in the morning and once at noon.",
]
PROBE = "Please check your connections before you blame the battery."


def espeak(tmp: Path, text: str, voice: str) -> np.ndarray:
    import librosa

    out = tmp / f"{abs(hash((text, voice)))}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(out), text], check=True)
    return librosa.load(out, sr=SR)[0].astype(np.float32)


def timed(fn, *args, repeat: int = 3):
    fn(*args)  # warm-up
    t = time.perf_counter()
    for _ in range(repeat):
        out = fn(*args)
    return out, (time.perf_counter() - t) / repeat


def metric_table() -> None:
    from voicepipe.evaluate import metrics as M
    from voicepipe.evaluate.asr import PocketSphinxAsr
    from voicepipe.models import load_speaker_encoder

    tmp = Path(tempfile.mkdtemp())
    enc = load_speaker_encoder()
    asr = PocketSphinxAsr()
    cen = M.centroid([M.embed_speaker(enc, espeak(tmp, t, "en-us+m3"), SR) for t in HELD_OUT])
    clips = {
        "target voice": espeak(tmp, PROBE, "en-us+m3"),
        "other voice": espeak(tmp, PROBE, "en-gb+f3"),
        "white noise": (np.random.default_rng(0).standard_normal(SR * 4) * 0.1).astype(np.float32),
        "silence": np.zeros(SR * 4, np.float32),
    }
    rows = []
    for name, wav in clips.items():
        v, t_valid = timed(M.check_audio, wav, SR, PROBE)
        emb, t_emb = timed(M.embed_speaker, enc, wav, SR)
        hyp, t_asr = timed(asr.transcribe, wav, SR)
        mos, t_mos = timed(M.predict_mos, wav, SR)
        wer = M.wer_cer([PROBE], [hyp])[0]
        rows.append((name, len(wav) / SR, "valid" if v.valid else "; ".join(r.split(" (")[0] for r in v.reasons),
                     "–" if emb is None else f"{M.cosine(emb, cen):.3f}", f"{wer:.2f}",
                     "–" if mos is None else f"{mos['ovrl']:.2f}", t_valid, t_emb, t_asr, t_mos))
    print("| clip | s | validity | SIM | WER (pocketsphinx) | DNSMOS OVRL | t validity | t SIM | t ASR | t MOS |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.1f} | {r[2]} | {r[3]} | {r[4]} | {r[5]} | {r[6]:.2f} s | {r[7]:.2f} s | "
              f"{r[8]:.2f} s | {r[9]:.2f} s |")


def _script() -> list[str]:
    lines = (ROOT / "voicepipe" / "evaluate" / "script.txt").read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def checkpoint_cost(tiny: bool, tiny_dir: Path | None, n_val: int, package_texts: int, chars_per_s: float,
                    out: Path | None) -> dict:
    """Synthesis cost of one checkpoint's evaluation: engine (batched) vs the package one text at a time."""
    import platform

    import torch

    from benchmarks.serve import build_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    script = _script()
    texts = script + [script[i % len(script)] for i in range(n_val)]
    frames = [max(4, math.ceil(len(t) / chars_per_s * 12.5)) for t in texts]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tts = build_model(device, dtype, tiny, Path(tmp), tiny_dir)
    build_s = time.perf_counter() - t0
    info = dict(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), torch=torch.__version__, device=device,
                gpu=torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
                model="tiny" if tiny else "1.7B full size, random weights", dtype=str(dtype), texts=len(texts),
                frames=sum(frames), audio_s=sum(frames) / 12.5, build_s=round(build_s, 1))
    print(info, flush=True)
    rows = [engine_cost(tts, texts, frames, warm=False), engine_cost(tts, texts, frames, warm=True)]
    if package_texts:  # spread over the list (the script's first sentences are its shortest)
        pick = sorted({round(i * (len(texts) - 1) / max(1, package_texts - 1)) for i in range(package_texts)})
        rows.append(package_cost(tts, [texts[i] for i in pick], [frames[i] for i in pick]))
    for r in rows:
        print(r, flush=True)
    result = dict(info=info, rows=rows)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval_bench.json").write_text(json.dumps(result, indent=2))
    print(table(rows))
    return result


def engine_cost(tts, texts: list[str], frames: list[int], *, warm: bool) -> dict:
    """The evaluator's path: a fresh engine per checkpoint (as `evaluate_model` builds it), all texts at once."""
    import torch

    from voicepipe.evaluate import metrics as M
    from voicepipe.evaluate.synth import synthesize_batch
    from voicepipe.serve.engine import EngineConfig, TTSEngine

    longest = max(len(t.encode()) for t in texts)
    eng = TTSEngine(tts, EngineConfig(max_batch=min(16, len(texts)), max_len=max(frames) + longest + 64))
    capture_s = eng.capture() if warm else 0.0  # warm: graphs captured before the clock starts
    eng.start()
    try:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        _sync()
        t0 = time.perf_counter()
        synths, wall = synthesize_batch(eng, texts, speaker="alice", caps=frames, seed=0, force_lengths=True)
        t_check = time.perf_counter()
        invalid = sum(bool(M.check_codes(s.codes).reasons) for s in synths)
        check_s = time.perf_counter() - t_check
        total = time.perf_counter() - t0
    finally:
        eng.stop()
    audio = sum(s.audio_s for s in synths)
    got = sum(len(s.codes) for s in synths)
    assert got == sum(frames), f"forced lengths not honoured: {got} frames for {sum(frames)}"
    mem = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return dict(system="engine, batched" + (" (graphs pre-captured)" if warm else " (cold: graph capture inside)"),
                texts=len(texts), audio_s=round(audio, 2), wall_s=round(wall, 2), rtf=round(wall / audio, 4),
                per_sample_s=round(wall / len(texts), 3), capture_s=round(capture_s, 1),
                code_checks_s=round(check_s, 3), total_s=round(total, 2), invalid_by_codes=invalid,
                peak_gib=None if mem is None else round(mem, 1))


def package_cost(tts, texts: list[str], frames: list[int]) -> dict:
    """The previous evaluator path: `generate_custom_voice`, one text at a time, same weights, forced lengths."""
    pad = tts.model.config.talker_config.codec_pad_id  # a suppressed id as EOS: generation runs to max_new_tokens
    kw = dict(speaker="alice", language="english", eos_token_id=pad)
    tts.generate_custom_voice(text=texts[0], max_new_tokens=3, **kw)  # warm-up
    _sync()
    t0 = time.perf_counter()
    for t, n in zip(texts, frames, strict=True):
        tts.generate_custom_voice(text=t, max_new_tokens=n + 1, **kw)  # N+1 tokens -> N frames generated
    _sync()
    wall = time.perf_counter() - t0
    # The package cuts its output at a sampled codec EOS (not suppressed by this trick) after generating all N frames,
    # so the audio it returns can be shorter than the work done: RTF is taken over the N generated frames.
    audio = sum(frames) / 12.5
    return dict(system="package generate_custom_voice, one text at a time", texts=len(texts),
                audio_s=round(audio, 2), wall_s=round(wall, 2), rtf=round(wall / audio, 4),
                per_sample_s=round(wall / len(texts), 3))


def table(rows: list[dict]) -> str:
    head = "| system | texts | audio s | wall s | RTF | s per text | graph capture s | peak GiB |"
    out = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['system']} | {r['texts']} | {r['audio_s']} | {r['wall_s']} | {r['rtf']} | "
                   f"{r['per_sample_s']} | {r.get('capture_s', '–')} | {r.get('peak_gib') or '–'} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", action="store_true", help="synthesis cost of one checkpoint's evaluation")
    ap.add_argument("--tiny", action="store_true", help="tiny model (CPU smoke test of --checkpoint)")
    ap.add_argument("--tiny-dir", type=Path, default=None, help="prebuilt voicepipe.models.tiny custom-voice dir")
    ap.add_argument("--val-texts", type=int, default=10, help="held-out texts added to the script (default 10)")
    ap.add_argument("--package-texts", type=int, default=3, help="texts run through the package for comparison")
    ap.add_argument("--chars-per-s", type=float, default=14.0, help="forced length: characters per second")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    if not a.checkpoint:
        metric_table()
        return
    checkpoint_cost(a.tiny, a.tiny_dir, a.val_texts, a.package_texts, a.chars_per_s, a.out)


if __name__ == "__main__":
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
