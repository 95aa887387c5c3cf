"""Speaker-model speed: compute per second of audio for each backend, at full size with random weights.

    python benchmarks/speaker.py                          # the device GPU: wavlm (+ wespeaker, resemblyzer if present)
    python benchmarks/speaker.py --device cpu --quick     # the same full-size models on this machine's CPU
    python benchmarks/speaker.py --tiny                   # CPU smoke: tiny WavLM (checks the script runs)
    python benchmarks/speaker.py --spread CLIPS_DIR       # REAL weights: same- vs other-speaker SIM per backend

Every model is built with its real class (`voicepipe.models.tiny`: WavLMForXVector at WavLM-base-plus-sv's shapes,
pyannote's WeSpeakerResNet34; resemblyzer's shipped weights), saved to disk and loaded through
`voicepipe.models.load_speaker_encoder`, so what is timed is the code the corpus and the evaluator run (speed does
not depend on the weights). Rows:
  - `embed`, one clip of 3 / 6 / 10 / 30 s (one forward pass each: the evaluator, and the corpus per clip);
  - `embed_many`, N clips of 6 s (equal lengths: batched, up to 64 per pass);
  - `embed_many`, N clips of 2-10 s of unequal length (batches only join equal lengths: one pass per clip).
Each row reports wall ms per second of audio and x real time (after one warm-up call), process-CPU ms per second
of audio (less distorted on a shared CPU), and peak GPU memory.
Backends whose packages are missing on the device (pyannote, resemblyzer) are reported as errors, not fatal.

`--spread CLIPS_DIR` is how a backend's promotion-margin floor is measured (`voicepipe.models.speaker.PROFILES`):
CLIPS_DIR holds one folder of real recordings per speaker (wav/flac, a few seconds each, >= 3 per speaker); each
backend with real weights available offline (VOICEPIPE_MODELS_DIR) embeds every clip as the evaluator does and
reports the same-speaker SIM (each clip against the centroid of its speaker's other clips: mean, SD, min) and the
other-speaker SIM (each clip against the other speakers' centroids: mean, SD, max). The same-speaker SD is the
turn-to-turn spread a promotion margin must exceed; the gap between the two means is how well the model separates
these speakers at all.
Results go to stdout and `$OUT/speaker.json` (or `--out`).
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

SR = 16000


def _signal(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise shaped like speech in time (4 Hz syllable-rate modulation, pauses): for speed only."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    env = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) * (np.sin(2 * np.pi * 0.1 * t) > -0.5) + 0.05
    return (0.1 * env * rng.standard_normal(t.size)).astype(np.float32)


def _timed(fn, sync, repeat: int) -> tuple[float, float]:
    """Wall and process-CPU seconds per call (CPU time is less distorted when other work loads the machine)."""
    fn()  # warm-up: allocations, cuDNN autotune, lazy inits
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        fn()
    sync()
    return (time.perf_counter() - t0) / repeat, (time.process_time() - c0) / repeat


def _build(backend: str, tmp: Path, tiny: bool) -> str:
    from voicepipe.models import tiny as T

    if backend == "wavlm":
        return str(T.build_tiny_wavlm_sv(tmp / "wavlm-base-plus-sv", full_size=not tiny))
    if backend == "wespeaker":
        return str(T.build_tiny_wespeaker(tmp / "wespeaker-voxceleb-resnet34-LM"))  # one size: the released one
    return "resemblyzer"


def bench_backend(backend: str, device: str, tmp: Path, *, tiny: bool, quick: bool) -> dict:
    import torch

    from voicepipe.config import load_settings
    from voicepipe.models import load_speaker_encoder

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    settings = load_settings(offline=True, models_dir=tmp, speaker_backend=backend)
    enc = load_speaker_encoder(_build(backend, tmp, tiny), device=device, settings=settings)
    model = getattr(enc.encoder, "module", enc.encoder)
    params = sum(p.numel() for p in model.parameters()) / 1e6 if hasattr(model, "parameters") else None
    out: dict = {"model": enc.info.key, "dim": enc.dim, "params_M": None if params is None else round(params, 1),
                 "rows": {}}
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    def record(name: str, audio_s: float, times: tuple[float, float]) -> None:
        wall, cpu = times
        out["rows"][name] = {"audio_s": round(audio_s, 1), "ms_per_audio_s": round(1000 * wall / audio_s, 3),
                             "x_realtime": round(audio_s / wall, 1),
                             "cpu_ms_per_audio_s": round(1000 * cpu / audio_s, 3)}
        print(f"{backend:12s} {name:44s} {1000 * wall / audio_s:9.3f} ms/s {audio_s / wall:9.1f} x "
              f"(process CPU {1000 * cpu / audio_s:.1f} ms/s)", flush=True)

    repeat = 1 if quick or tiny else 5
    for secs in (3, 6, 10) if quick or tiny else (3, 6, 10, 30):
        clip = _signal(secs)
        record(f"embed, one {secs} s clip", secs, _timed(lambda c=clip: enc.embed(c, SR), sync, repeat))
    n = 8 if quick or tiny else 64
    same = [_signal(6.0, seed=i) for i in range(n)]
    record(f"embed_many, {n} x 6 s (batched)", 6.0 * n, _timed(lambda: enc.embed_many(same, SR, 64), sync, 1))
    rng = np.random.default_rng(1)
    mixed = [_signal(float(rng.uniform(2, 10)), seed=i) for i in range(n)]
    total = sum(len(m) for m in mixed) / SR
    record(f"embed_many, {n} x 2-10 s (per-clip passes)", total, _timed(lambda: enc.embed_many(mixed, SR, 64),
                                                                       sync, 1))
    if device.startswith("cuda"):
        out["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def spread(root: Path, backends: list[str], device: str) -> dict:
    """Same- and other-speaker SIM of real recordings per backend (real weights; see the module doc)."""
    import soundfile as sf

    from voicepipe.evaluate import metrics as M
    from voicepipe.models import load_speaker_encoder

    clips = {d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in (".wav", ".flac"))
             for d in sorted(root.iterdir()) if d.is_dir()}
    clips = {k: v for k, v in clips.items() if len(v) >= 3}
    if not clips:
        raise SystemExit(f"--spread {root}: no speaker folder with >= 3 wav/flac clips")
    out: dict = {}
    for backend in backends:
        try:
            enc = load_speaker_encoder(device=device, backend=backend)
        except Exception as e:  # no real weights for this backend here: say so, measure the others
            out[backend] = {"error": str(e)}
            print(f"{backend}: {e}", flush=True)
            continue
        embs: dict[str, list[np.ndarray]] = {}
        for spk, paths in clips.items():
            for p in paths:
                wav, sr = sf.read(p, dtype="float32", always_2d=False)
                e = M.embed_speaker(enc, wav, sr)
                if e is not None:
                    embs.setdefault(spk, []).append(e)
        same = {spk: M.real_speech_sim(e) for spk, e in embs.items() if len(e) >= 3}
        cents = {spk: M.centroid(e) for spk, e in embs.items()}
        other = [M.cosine(e, cents[o]) for spk, es in embs.items() for e in es for o in cents if o != spk]
        row = {"model": enc.info.key, "same_speaker": same,
               "other_speaker": {"mean": float(np.mean(other)), "sd": float(np.std(other)),
                                 "max": float(np.max(other)), "n": len(other)} if other else None}
        out[backend] = row
        for spk, r in same.items():
            if r:
                print(f"{backend:12s} {spk:20s} same-speaker SIM {r['mean']:.3f} ± {r['sd']:.3f} (min {r['min']:.3f}, "
                      f"{int(r['n'])} clips)", flush=True)
        if other:
            o = row["other_speaker"]
            print(f"{backend:12s} {'(other speakers)':20s} other-speaker SIM {o['mean']:.3f} ± {o['sd']:.3f} "
                  f"(max {o['max']:.3f})", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="wavlm,wespeaker,resemblyzer")
    ap.add_argument("--device", default=None, help="default: cuda when visible, else cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny WavLM, short clips (CPU smoke of this script)")
    ap.add_argument("--quick", action="store_true", help="fewer, shorter clips (full-size models on a CPU)")
    ap.add_argument("--spread", type=Path, default=None, help="folder of per-speaker folders of real clips")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", tempfile.gettempdir())))
    args = ap.parse_args()
    if args.spread is not None:
        result = spread(args.spread, args.backends.split(","), args.device or "cpu")
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "speaker_spread.json").write_text(json.dumps(result, indent=1) + "\n")
        return

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    backends = ["wavlm"] if args.tiny else args.backends.split(",")
    info = {"device": torch.cuda.get_device_name(0) if device.startswith("cuda") else f"cpu x{os.cpu_count()}",
            "torch": torch.__version__, "transformers": transformers.__version__, "torch_threads":
            torch.get_num_threads(), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
            "full_size": not args.tiny, "backends": {}}
    print(json.dumps({k: v for k, v in info.items() if k != "backends"}), flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-speaker-"))
    for backend in backends:
        try:
            info["backends"][backend] = bench_backend(backend, device, tmp, tiny=args.tiny, quick=args.quick)
        except Exception as e:  # one missing package must not lose the other backends' numbers
            info["backends"][backend] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            print(f"{backend}: {info['backends'][backend]['error']}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speaker.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"wrote {args.out / 'speaker.json'}")


if __name__ == "__main__":
    main()
