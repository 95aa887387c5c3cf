"""What each evaluation metric costs per sample on this machine, and how well it separates real speech from junk.

Real speech = espeak-ng voices (the target en-us+m3, another voice en-gb+f3); junk = white noise, silence.
Prints a markdown table; run: `.venv/bin/python benchmarks/evaluate.py`.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

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


def main() -> None:
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


if __name__ == "__main__":
    main()
