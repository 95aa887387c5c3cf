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


def run_gpu(out: Path, smoke: bool = False) -> dict:
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    results: dict[str, dict] = {}

    def timed(fn, reps: int = 2) -> float:
        fn()  # warm-up (cudnn autotune, allocations)
        sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        return (time.perf_counter() - t0) / reps

    # ---- separation: HTDemucs, 60 s of stereo 44.1 kHz
    try:
        from demucs.apply import apply_model
        from demucs.htdemucs import HTDemucs

        kw = {"channels": 8, "t_layers": 1} if smoke else {}
        model = HTDemucs(sources=["drums", "bass", "other", "vocals"], **kw).to(dev).eval()
        secs = 4.0 if smoke else 120.0
        mix = torch.randn(1, 2, int(44100 * secs))
        with torch.inference_mode():
            wall = timed(lambda: apply_model(model, mix, split=True, overlap=0.25, device=dev), reps=1)
        print("separation done", flush=True)
        results["separation (HTDemucs)"] = {"audio_s": secs, "wall_s": round(wall, 3),
                                            "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1)}
        del model
    except Exception as e:  # report and go on: one failing part must not lose the others' numbers
        results["separation (HTDemucs)"] = {"error": f"{type(e).__name__}: {e}"}

    # ---- diarization neural parts: PyanNet over 10 s windows every 1 s + 3 ResNet34 embeddings per window
    try:
        from pyannote.audio.core.task import Problem, Resolution, Specifications
        from pyannote.audio.models.embedding import WeSpeakerResNet34
        from pyannote.audio.models.segmentation import PyanNet

        seg = PyanNet(sample_rate=16000)
        seg.specifications = Specifications(
            problem=Problem.MONO_LABEL_CLASSIFICATION, resolution=Resolution.FRAME, duration=10.0,
            min_duration=10.0, classes=["s1", "s2", "s3"], powerset_max_classes=2, permutation_invariant=True,
        )
        seg.build()
        seg = seg.to(dev).eval()
        emb = WeSpeakerResNet34(sample_rate=16000).to(dev).eval()
        secs = 4.0 if smoke else 600.0
        n_win = int(secs)  # one 10 s window per second of audio
        batch = 32

        def diar() -> None:
            with torch.inference_mode():
                for i in range(0, n_win, batch):
                    b = min(batch, n_win - i)
                    x = torch.randn(b, 1, 160000, device=dev)
                    seg(x)
                    emb(torch.randn(b * 3, 1, 160000, device=dev))

        wall = timed(diar, reps=1)
        results["diarization (PyanNet + ResNet34)"] = {"audio_s": secs, "wall_s": round(wall, 3)}
    except Exception as e:
        results["diarization (PyanNet + ResNet34)"] = {"error": f"{type(e).__name__}: {e}"}

    # ---- ASR: Whisper-large-v3 shapes, fp16, 16 segments of 8 s, 40 tokens each
    try:
        from transformers import WhisperConfig, WhisperForConditionalGeneration

        if smoke:
            cfg = WhisperConfig(d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                                decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128,
                                num_mel_bins=128, vocab_size=51866)
        else:
            cfg = WhisperConfig(d_model=1280, encoder_layers=32, decoder_layers=32, encoder_attention_heads=20,
                                decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120,
                                num_mel_bins=128, vocab_size=51866, max_source_positions=1500,
                                max_target_positions=448)
        dtype = torch.float16 if dev == "cuda" else torch.float32
        with torch.device(dev):
            model = WhisperForConditionalGeneration(cfg).to(dtype).eval()
        bs, seg_s, toks = 16, 8.0, 40
        feats = torch.randn(bs, 128, 3000, device=dev, dtype=dtype)

        def asr() -> None:
            with torch.inference_mode():
                model.generate(feats, min_new_tokens=toks, max_new_tokens=toks, do_sample=False,
                               decoder_start_token_id=50258, pad_token_id=50257, eos_token_id=50257)

        wall = timed(asr, reps=1)
        results["ASR (Whisper-large-v3 shapes, fp16)"] = {
            "audio_s": bs * seg_s, "wall_s": round(wall, 3),
            "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        }
        del model
    except Exception as e:
        results["ASR (Whisper-large-v3 shapes, fp16)"] = {"error": f"{type(e).__name__}: {e}"}

    # ---- codec encode: MimiModel at default shapes, 16 of 32 quantizers
    try:
        from transformers import MimiConfig, MimiModel

        cfg = MimiConfig(num_quantizers=32) if not smoke else MimiConfig(
            num_quantizers=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=2, head_dim=16, num_filters=4, codebook_dim=16,
            vector_quantization_hidden_dimension=16, upsample_groups=32)
        with torch.device(dev):
            model = MimiModel(cfg).eval()
        bs, clip_s = 8, 8.0
        x = torch.randn(bs, 1, int(24000 * clip_s), device=dev)

        def enc() -> None:
            with torch.inference_mode():
                model.encode(x, num_quantizers=16)

        wall = timed(enc, reps=2)
        results["codec encode (Mimi encoder)"] = {
            "audio_s": bs * clip_s, "wall_s": round(wall, 3),
            "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        }
    except Exception as e:
        results["codec encode (Mimi encoder)"] = {"error": f"{type(e).__name__}: {e}"}

    for v in results.values():
        if "wall_s" in v:
            v["x_realtime"] = _rate(v["audio_s"], v["wall_s"])
    info = {"device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu", "torch": torch.__version__}
    report = {"info": info, "results": results}
    out.mkdir(parents=True, exist_ok=True)
    (out / "ingest_gpu.json").write_text(json.dumps(report, indent=1))
    print(f"{'part':42s} {'audio s':>8s} {'wall s':>8s} {'x real time':>12s}")
    for k, v in results.items():
        rate = v.get("x_realtime", v.get("error"))
        print(f"{k:42s} {v.get('audio_s', 0):8.0f} {v.get('wall_s', 0):8.3f} {rate!s:>12s}")
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["cpu", "gpu"])
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/out"))
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (check the script runs)")
    args = ap.parse_args()
    if args.mode == "cpu":
        rep = run_cpu(args.episodes)
        print(json.dumps(rep, indent=1))
    else:
        run_gpu(Path(args.out), smoke=args.smoke)


if __name__ == "__main__":
    main()
