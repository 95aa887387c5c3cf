"""Corpus ingestion speed: seconds of audio processed per wall second, per step.

    python benchmarks/ingest.py cpu [--episodes 4]     # this machine: every step of a real build
    python benchmarks/ingest.py gpu [--out DIR]        # device GPU: full-size separation/diarization/ASR/codec

`cpu` builds a fresh corpus from the synthetic podcast with one worker (so per-step wall times do not overlap)
and reports each step's audio-seconds / wall-second, plus the light sub-steps (decode+normalize, VAD, filter
metrics) measured alone. Models: real resemblyzer, silero, pocketsphinx; tiny random codec.

`gpu` times the neural parts at FULL-SIZE architectures with RANDOM weights (speed does not depend on the
weights, except that a random Whisper never stops: it decodes a fixed 40 tokens per segment, about what 8 s
of English speech needs):
  - separation: HTDemucs (demucs' default hyper-parameters, 4 sources) through `demucs.apply.apply_model`;
  - diarization: pyannote's neural parts at community-1 shapes: PyanNet segmentation over 10 s windows every
    1 s, and WeSpeaker-ResNet34 embeddings for 3 speakers per window (clustering not timed);
  - ASR: Whisper-large-v3 shapes (fp16), batches of 16 segments of 8 s (Whisper pads each to 30 s);
  - codec: the 12 Hz tokenizer's encoder = transformers' MimiModel at its default (kyutai/mimi) shapes,
    32 quantizers of which 16 are used, batches of 8 clips of 8 s.
The device image has no demucs/pyannote: carry their pure-Python packages copied from .venv's site-packages
(demucs, julius, einops, pyannote*, lightning*, torchmetrics, asteroid_filterbanks, opentelemetry, ...) in
`.wheels/corpus-site` and put it on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rate(audio_s: float, wall_s: float) -> float:
    return round(audio_s / wall_s, 1) if wall_s > 0 else float("inf")


class _Clock:
    """Wall and process-CPU seconds of a block (CPU time is less distorted when others load the machine)."""

    def __enter__(self) -> _Clock:
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c

    def rates(self, audio_s: float) -> dict:
        return {"x_realtime_wall": _rate(audio_s, self.wall), "audio_s_per_cpu_s": _rate(audio_s, self.cpu)}


def run_cpu(episodes: int) -> dict:
    from voicepipe.audio import load_audio_checked, normalize_loudness
    from voicepipe.corpus.build import build_local
    from voicepipe.corpus.config import CorpusParams
    from voicepipe.corpus.engines import SpeakerEncoder, Vad
    from voicepipe.corpus.synthetic import make_podcast
    from voicepipe.models.tiny import build_tiny_codec

    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    truth = make_podcast(tmp / "pod", n_episodes=episodes, seed=3, episode_seconds=60.0)
    codec = build_tiny_codec(tmp / "codec")
    params = CorpusParams(
        speaker="bench", enroll=[str(p) for p in truth.enrollment], out=str(tmp / "out"),
        sources=[str(tmp / "pod")], separate=False, asr_backend="pocketsphinx", codec_model=str(codec), workers=1,
        store_url=str(tmp / "store"), val_fraction=0.0,
    )
    t0 = time.perf_counter()
    res = build_local(params, progress=False)
    total = time.perf_counter() - t0
    audio = res.audio_seconds
    rows = {f"step {k}": _rate(audio, v) for k, v in res.step_seconds.items() if v > 0}
    rows["whole build (cold, incl. model loads)"] = _rate(audio, total)
    t0 = time.perf_counter()
    build_local(params, progress=False)
    rows["whole build (rerun, all cache hits)"] = _rate(audio, time.perf_counter() - t0)

    # light steps alone, models already loaded
    files = [tmp / "pod" / ep.file for ep in truth.episodes]
    wavs = []
    with _Clock() as clk:
        for f in files:
            w = load_audio_checked(f, 24000)
            normalize_loudness(w, 24000)
            wavs.append(w)
    rows["light: decode mp3 + loudness-normalize"] = clk.rates(audio)
    import librosa

    w16 = [librosa.resample(w, orig_sr=24000, target_sr=16000) for w in wavs]
    vad = Vad()
    vad.speech(w16[0][:16000])
    with _Clock() as clk:
        for w in w16:
            vad.speech(w)
    rows["light: VAD (silero)"] = clk.rates(audio)
    from voicepipe.audio import clipped_fraction, estimate_snr_db, loudness_lufs

    with _Clock() as clk:
        for w in wavs:
            for i in range(0, w.size - 24000 * 8, 24000 * 8):
                seg = w[i : i + 24000 * 8]
                clipped_fraction(seg), loudness_lufs(seg, 24000), estimate_snr_db(seg, None, 24000)
    rows["light: filter metrics (clip, LUFS, SNR)"] = clk.rates(audio)
    spk = SpeakerEncoder()
    with _Clock() as clk:
        for w in w16:
            for i in range(0, w.size - 16000 * 6, 16000 * 6):
                spk.embed(w[i : i + 16000 * 6])
    rows["speaker embeddings (resemblyzer, 6 s pieces)"] = clk.rates(audio)
    rows["load average (1 min) at end"] = os.getloadavg()[0]
    return {"audio_seconds": audio, "utterances": res.utterances, "rates": rows, "threads": os.cpu_count()}


def _timed(fn, sync) -> float:
    fn()  # warm-up (cudnn autotune, allocations, lazy inits)
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def _test_signal(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    """Noise shaped like speech in time: 4 Hz syllable-rate amplitude modulation and pauses (speed only)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    env = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) * (np.sin(2 * np.pi * 0.1 * t) > -0.5)
    return (0.1 * env * rng.standard_normal(t.size)).astype(np.float32)


def run_gpu(out: Path, smoke: bool = False, parts: str = "separate,diarize,asr,codec") -> dict:
    """Time voicepipe's own corpus engines (`voicepipe.corpus.engines`) on full-size random-weight models that are
    built with the real classes, saved to disk and loaded through voicepipe's loaders."""
    import torch
    import transformers

    from voicepipe.corpus.engines import Asr, Codec, Diarizer, Separator

    transformers.logging.set_verbosity_error()
    from voicepipe.models import tiny

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    full = not smoke
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-gpu-"))
    episode_s = 30.0 if smoke else 600.0
    results: dict[str, dict] = {}

    def record(name: str, audio_s: float, wall: float, **extra: object) -> None:
        results[name] = {"audio_s": audio_s, "wall_s": round(wall, 3), "x_realtime": _rate(audio_s, wall), **extra}
        print(f"{name:55s} {audio_s:7.0f} s audio {wall:8.3f} s wall {_rate(audio_s, wall):9.1f} x", flush=True)

    def n_params(m: torch.nn.Module) -> float:
        return round(sum(p.numel() for p in m.parameters()) / 1e6, 1)

    wanted = set(parts.split(","))
    if "separate" in wanted:  # Demucs over the whole episode, pieces batched (voicepipe's `separation_batch`)
        try:
            path = tiny.build_tiny_demucs(tmp / "demucs", full_size=full)
            wav = _test_signal(episode_s, 24000)
            for batch in (1, 8, 16) if not smoke else (1, 2):
                sep = Separator(str(path), dev, batch=batch)
                wall = _timed(lambda s=sep: s.vocals(wav, 24000), sync)
                record(f"separate: HTDemucs, batch {batch}", episode_s, wall, params_M=n_params(sep.model))
                del sep
        except Exception as e:  # report and go on: one failing part must not lose the others' numbers
            results["separate"] = {"error": f"{type(e).__name__}: {e}"}
    if "diarize" in wanted:  # the whole pyannote pipeline (segmentation, embeddings, VBx clustering)
        try:
            path = tiny.build_tiny_diarization(tmp / "diar", full_size=full)
            wav = _test_signal(episode_s, 16000)
            diar = Diarizer(str(path), dev, fp16=False)
            record("diarize: pyannote community-1 shapes, fp32", episode_s, _timed(lambda: diar(wav), sync))
            diar = Diarizer(str(path), dev)
            steps: dict[str, list[float]] = {}

            def hook(step_name: str, *args: object, **kw: object) -> None:
                sync()
                steps.setdefault(step_name, [time.perf_counter()]).append(time.perf_counter())

            wall = _timed(lambda: diar(wav), sync)
            t0 = time.perf_counter()
            turns = diar.pipeline({"waveform": torch.from_numpy(wav)[None], "sample_rate": 16000}, hook=hook)
            sync()
            marks = sorted((v[0], k) for k, v in steps.items())
            split = {k: round((marks[i + 1][0] if i + 1 < len(marks) else time.perf_counter()) - t, 3)
                     for i, (t, k) in enumerate(marks)}  # fmt: skip
            record("diarize: pyannote community-1 shapes, fp16 autocast (voicepipe's GPU default)", episode_s, wall,
                   seg_params_M=n_params(diar.pipeline._segmentation.model),
                   emb_params_M=n_params(diar.pipeline._embedding.model_),
                   seconds_from_step_start=split, setup_s=round(marks[0][0] - t0, 3) if marks else None,
                   speakers_found=len(getattr(turns, "speaker_diarization", turns).labels()))  # fmt: skip
            del diar
        except Exception as e:
            results["diarize"] = {"error": f"{type(e).__name__}: {e}"}
    if "asr" in wanted:  # Whisper over 8 s segments, 40 tokens each (random weights: end-of-text suppressed)
        try:
            path = tiny.build_tiny_whisper(tmp / "whisper", full_size=full)
            asr = Asr("whisper", str(path), dev)
            gen = asr.model.generation_config
            gen.suppress_tokens = [*(gen.suppress_tokens or []), gen.eos_token_id]
            asr.max_new_tokens = 40
            segs = [_test_signal(8.0, 16000, seed=i) for i in range(4 if smoke else 128)]
            for batch in (8, 32, 64) if not smoke else (2,):
                chunks = [segs[i : i + batch] for i in range(0, len(segs), batch)]
                wall = _timed(lambda c=chunks: [asr.transcribe(x, "en") for x in c], sync)
                record(f"asr: Whisper-large-v3 shapes fp16, batch {batch}, 40 tokens", 8.0 * len(segs), wall,
                       params_M=n_params(asr.model))  # fmt: skip
            del asr
        except Exception as e:
            results["asr"] = {"error": f"{type(e).__name__}: {e}"}
    if "codec" in wanted:  # the 12 Hz tokenizer's encoder over 8 s clips, 8 per call (the encode step's batch)
        try:
            path = tiny.build_tiny_codec(tmp / "codec", full_size=full)
            codec = Codec(str(path), dev)
            clips = [_test_signal(8.0, 24000, seed=i) for i in range(8 if smoke else 64)]
            wall = _timed(lambda: [codec.encode(clips[i : i + 8]) for i in range(0, len(clips), 8)], sync)
            record("codec: Qwen3-TTS 12 Hz tokenizer encode, batch 8", 8.0 * len(clips), wall,
                   params_M=n_params(codec.tokenizer.model))  # fmt: skip
        except Exception as e:
            results["codec"] = {"error": f"{type(e).__name__}: {e}"}

    info = {"device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu", "torch": torch.__version__,
            "episode_s": episode_s}  # fmt: skip
    report = {"info": info, "results": results, "per_gpu_hour": _per_gpu_hour(results)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "ingest_gpu.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report["per_gpu_hour"], indent=1))
    return report


def _per_gpu_hour(results: dict[str, dict]) -> dict:
    """Hours of episode audio per GPU-hour for the GPU steps in sequence, with each step's best measured setting:
    separation and diarization run on the whole episode, ASR and codec on the fraction `f` kept for them."""

    def best(prefix: str) -> float | None:
        rates = [v["x_realtime"] for k, v in results.items() if k.startswith(prefix) and "x_realtime" in v]
        return max(rates) if rates else None

    r = {p: best(p) for p in ("separate", "diarize", "asr", "codec")}
    if any(v is None for v in r.values()):
        return {"best_x_realtime": r, "note": "not every step measured"}
    out: dict = {"best_x_realtime": r}
    # 0.74: the share of episode seconds that reached ASR in the synthetic two-voice podcast (corpus.json flow_minutes:
    # 1.526 of 2.058 min); 1.0: an episode that is all target speech; 0.5: an evenly split two-host show
    for f in (1.0, 0.74, 0.5):
        cost = 1 / r["separate"] + 1 / r["diarize"] + f / r["asr"] + f / r["codec"]
        out[f"hours_per_gpu_hour_asr_codec_on_{int(f * 100)}pct"] = round(1 / cost, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["cpu", "gpu"])
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/out"))
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (check the script runs)")
    ap.add_argument("--parts", default="separate,diarize,asr,codec", help="gpu: which steps to time")
    args = ap.parse_args()
    if args.mode == "cpu":
        rep = run_cpu(args.episodes)
        print(json.dumps(rep, indent=1))
    else:
        run_gpu(Path(args.out), smoke=args.smoke, parts=args.parts)


if __name__ == "__main__":
    main()
