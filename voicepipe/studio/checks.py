"""Checks of one recorded take, run while the speaker is still at the microphone.

Each finding is an `Issue` with a code, a plain-language message and a severity: `redo` (the take should be recorded
again) or `note` (worth knowing; the corpus build copes, e.g. long silence that it trims). The measures behind them
come from the project's shared helpers: clipping, loudness (BS.1770) and the SNR estimate from `voicepipe.audio`,
speech regions from silero-vad (the corpus VAD), DNSMOS from `voicepipe.evaluate.metrics` (weights in the
`speechmos` wheel, offline), and the transcript from `voicepipe.models.asr.Asr` scored by WER after the evaluator's
text normalisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from voicepipe.audio import clipped_fraction, estimate_snr_db, frame_rms_db, loudness_lufs, resample

SR16 = 16000


class Thresholds(BaseModel):
    """When a take gets an issue. Defaults suit a home recording for TTS: quiet room, no processing, headroom."""

    max_clipped_fraction: float = Field(0.0005, description="Samples in flat-topped runs at full scale (fraction).")
    max_peak_dbfs: float = Field(-1.0, description="A peak above this (dBFS) leaves no headroom: too loud.")
    min_speech_lufs: float = Field(-38.0, description="Speech quieter than this (LUFS) is too quiet.")
    max_speech_lufs: float = Field(-12.0, description="Speech louder than this (LUFS) is too loud.")
    min_snr_db: float = Field(20.0, description="Speech over the background between words (dB).")
    min_dnsmos_bak: float = Field(3.0, description="DNSMOS background score (1-5) below this: audible noise.")
    min_dnsmos_ovrl: float = Field(2.5, description="DNSMOS overall score (1-5) below this: poor quality.")
    min_phones_per_s: float = Field(6.0, description="Slower than this (phonemes per second of speech).")
    max_phones_per_s: float = Field(20.0, description="Faster than this (phonemes per second of speech).")
    min_edge_s: float = Field(0.12, description="Speech closer than this to the start/end of the take: cut off.")
    max_edge_silence_s: float = Field(3.0, description="More silence than this before/after speech: a note.")
    max_wer: float = Field(0.2, description="Word error rate of the transcript vs the prompt (Whisper).")
    max_wer_weak_asr: float = Field(0.5, description="The same with PocketSphinx (a much weaker recogniser).")


@dataclass
class Issue:
    """One finding: `code` (stable, for scripts and tests), `message` (for the speaker), `severity`."""

    code: str
    message: str
    severity: str = "redo"

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "severity": self.severity}


def _db(x: float) -> float:
    return float(20 * math.log10(max(x, 1e-10)))


def _r(x: float | None, nd: int = 2) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), nd)


def check_take(
    wav: np.ndarray,
    sr: int,
    text: str,
    *,
    phones: list[str] | None = None,
    vad: Any = None,
    asr: Any = None,
    asr_language: str | None = "en",
    dnsmos: bool = True,
    th: Thresholds | None = None,
) -> dict[str, Any]:
    """Check one take of `text` (`wav`: float mono at `sr`, as recorded). Returns `{"issues": [...], "measures":
    {...}, "verdict": "keep" | "redo"}`.

    `phones`: the prompt's phonemes (speaking rate; without them, characters stand in); `vad`: a
    `voicepipe.corpus.engines.Vad` (built here if None); `asr`: a `voicepipe.models.asr.Asr` or None to skip the
    transcript check; `dnsmos`: also score with DNSMOS."""
    th = th or Thresholds()
    x = np.nan_to_num(np.asarray(wav, dtype=np.float32).reshape(-1))
    dur = x.size / sr if sr else 0.0
    issues: list[Issue] = []
    m: dict[str, Any] = {"duration_s": _r(dur, 3)}
    if dur < 0.3:
        issues.append(Issue("empty", f"the take is {dur:.2f} s long: nothing was recorded"))
        return _verdict(issues, m)

    peak = float(np.max(np.abs(x)))
    clipped = clipped_fraction(x)
    m.update(peak_dbfs=_r(_db(peak), 1), clipped_fraction=_r(clipped, 5))

    if vad is None:
        from voicepipe.corpus.engines import Vad

        vad = Vad()
    x16 = resample(x, sr, SR16)
    speech = vad.speech(x16, min_silence_s=0.3)
    if not speech:
        issues.append(Issue("silence", "no speech heard: is the right microphone selected and unmuted?"))
        return _verdict(issues, m)
    start, end = speech[0][0], speech[-1][1]
    speech_s = float(sum(e - s for s, e in speech))
    m.update(speech_start_s=_r(start, 3), speech_end_s=_r(end, 3), speech_s=_r(speech_s, 3),
             lead_silence_s=_r(start, 3), trail_silence_s=_r(dur - end, 3))

    # ---- levels
    if clipped > th.max_clipped_fraction:
        issues.append(Issue("clipping", f"clipping: {clipped:.2%} of the samples are flat at full scale; turn the "
                                        "input gain down (or move back from the microphone) and record it again"))
    elif _db(peak) > th.max_peak_dbfs:
        issues.append(Issue("too_loud", f"too loud: peaks reach {_db(peak):.1f} dBFS with no headroom (keep them "
                                        f"under {th.max_peak_dbfs:g} dBFS); turn the gain down a little"))
    voiced = np.concatenate([x[int(s * sr) : int(e * sr)] for s, e in speech])
    lufs = loudness_lufs(voiced, sr)
    m["speech_lufs"] = _r(lufs, 1)
    if math.isfinite(lufs) and lufs < th.min_speech_lufs:
        issues.append(Issue("too_quiet", f"too quiet: speech at {lufs:.1f} LUFS (aim for about -23; at least "
                                         f"{th.min_speech_lufs:g}); turn the gain up or come closer"))
    elif math.isfinite(lufs) and lufs > th.max_speech_lufs and not any(i.code == "clipping" for i in issues):
        issues.append(Issue("too_loud", f"too loud: speech at {lufs:.1f} LUFS (above {th.max_speech_lufs:g})"))

    # ---- noise: background between and around the words, and DNSMOS
    gaps = [(0.0, start), *[(a[1], b[0]) for a, b in zip(speech, speech[1:], strict=False)], (end, dur)]
    noise = np.concatenate([x[int(a * sr) : int(b * sr)] for a, b in gaps if b - a > 0.05] or [np.zeros(0)])
    snr = estimate_snr_db(voiced, noise if noise.size >= int(0.1 * sr) else None, sr)
    m["snr_db"] = _r(min(snr, 99.0), 1)
    if snr < th.min_snr_db:
        issues.append(Issue("noise", f"background noise: speech is only {snr:.0f} dB above the room (want at least "
                                     f"{th.min_snr_db:g} dB); switch off fans, close the window"))
    if dnsmos:
        from voicepipe.evaluate.metrics import predict_mos

        mos = predict_mos(x16, SR16)
        if mos:
            m["dnsmos"] = {k: _r(v, 2) for k, v in mos.items()}
            if mos["bak"] < th.min_dnsmos_bak and not any(i.code == "noise" for i in issues):
                issues.append(Issue("noise", f"background noise: DNSMOS background score {mos['bak']:.1f} < "
                                             f"{th.min_dnsmos_bak:g}"))
            if mos["ovrl"] < th.min_dnsmos_ovrl:
                # a note, not a redo: the overall score also reflects the voice itself, not only the recording
                issues.append(Issue("quality", f"DNSMOS overall {mos['ovrl']:.1f} < {th.min_dnsmos_ovrl:g}: listen "
                                               "for distortion or room echo", "note"))

    # ---- edges: speech touching the start/end of the take, or long silences
    if start < th.min_edge_s or _edge_loud(x, sr, head=True):
        issues.append(Issue("cut_start", "the first word may be cut: speech starts right at the beginning; wait a "
                                         "moment after starting the recording"))
    if dur - end < th.min_edge_s or _edge_loud(x, sr, head=False):
        issues.append(Issue("cut_end", "the last word may be cut: speech runs to the very end; stop a moment "
                                       "after you finish"))
    if start > th.max_edge_silence_s:
        issues.append(Issue("lead_silence", f"{start:.1f} s of silence before speaking (trimmed in the corpus)",
                            "note"))
    if dur - end > th.max_edge_silence_s:
        issues.append(Issue("trail_silence", f"{dur - end:.1f} s of silence after speaking (trimmed in the corpus)",
                            "note"))

    # ---- speaking rate over the speech span
    span = max(end - start, 1e-3)
    units = phones if phones else [c for c in text if c.isalnum()]
    rate = len(units) / span
    lo, hi = (th.min_phones_per_s, th.max_phones_per_s) if phones else (th.min_phones_per_s * 0.8,
                                                                       th.max_phones_per_s * 1.2)
    m["rate_per_s"] = _r(rate, 1)
    m["rate_unit"] = "phonemes" if phones else "characters"
    if rate > hi:
        issues.append(Issue("too_fast", f"too fast: {rate:.1f} {m['rate_unit']}/s (at most {hi:g}); read it "
                                        "more slowly"))
    elif rate < lo:
        issues.append(Issue("too_slow", f"too slow or long pauses: {rate:.1f} {m['rate_unit']}/s (at least {lo:g})"))

    # ---- words: the recogniser's transcript against the prompt
    if asr is not None:
        from voicepipe.evaluate.metrics import normalize_text, wer_cer

        heard, conf = asr.transcribe([x16[int(max(0.0, start - 0.2) * SR16) : int((end + 0.2) * SR16)]],
                                     asr_language, sr=SR16)[0]
        wer, cer = wer_cer([text], [heard])
        limit = th.max_wer if getattr(asr, "backend", "") == "whisper" else th.max_wer_weak_asr
        m.update(asr_text=heard.strip(), asr_backend=getattr(asr, "name", "asr"), wer=_r(wer, 3), cer=_r(cer, 3),
                 asr_conf=_r(conf, 3))
        if not normalize_text(heard):
            issues.append(Issue("words", "the recogniser heard no words"))
        elif math.isfinite(wer) and wer > limit:
            issues.append(Issue("words", f"the words differ from the prompt (WER {wer:.0%} > {limit:.0%}); "
                                         f"heard: \u201c{heard.strip()}\u201d"))
    return _verdict(issues, m)


def _edge_loud(x: np.ndarray, sr: int, head: bool, edge_s: float = 0.05) -> bool:
    """Whether the first/last `edge_s` of the take is nearly as loud as its speech (a word running into the edge)."""
    n = int(edge_s * sr)
    if x.size < 4 * n:
        return False
    frames = frame_rms_db(x, sr, 0.025)
    loud = float(np.percentile(frames, 90))
    k = max(1, int(edge_s / 0.025))
    edge = frames[:k] if head else frames[-k:]
    return bool(loud > -50 and float(np.max(edge)) > loud - 10.0)


def _verdict(issues: list[Issue], measures: dict[str, Any]) -> dict[str, Any]:
    redo = any(i.severity == "redo" for i in issues)
    return {"issues": [i.as_dict() for i in issues], "measures": measures, "verdict": "redo" if redo else "keep"}
