"""An enrollment from another channel than the show: how far it moves each episode's target speaker, and the build.

    python benchmarks/enroll_channel.py BUILD [BUILD ...] [--rebuild phone]

A BUILD is a directory `benchmarks/corpus_purity.py --work` left (`out/corpus.json` and `store/`); its podcast (the
truth) is the directory of its enrollment clips. The enrollment clips are re-recorded three ways, by hand-written
filters: `phone` (`voicepipe.corpus.synthetic.telephone`: 8 kHz, 300-3400 Hz, mu-law, line noise), `room` (a 0.6 s
exponentially decaying noise tail: another room), and both. For each, the cosine of every episode's target speaker
(its diarized cluster as the build stored it, in the speaker model's own space) to the re-recorded enrollment's
centroid, for the episodes with the target (T) and without (a), against today's `FilterConfig.min_target_speaker_sim`.
The clusters are the build's: a new enrollment may also pick another cluster, which only `--rebuild` shows.

`--rebuild KIND` builds each BUILD again from its own store with that copy of the enrollment (diarize and the later
steps run again: minutes), with the build's filters but today's target-speaker floor, and prints purity / recall per
episode, or the failure message.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from feed_rule import feed_inputs, stored_build  # noqa: E402

KINDS = ("phone", "room", "phone+room")


def rerecord(wav16k: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A 16 kHz clip as `kind` ("phone", "room" or "phone+room") would have recorded it."""
    from scipy.signal import fftconvolve

    from voicepipe.audio import resample
    from voicepipe.corpus.synthetic import telephone

    out = np.asarray(wav16k, dtype=np.float32)
    if "room" in kind:
        n = int(0.6 * 16000)
        ir = rng.standard_normal(n) * np.exp(-6.9 * np.arange(n) / n)
        ir[0] = 1.0
        out = fftconvolve(out, ir / np.sqrt(np.sum(ir**2)))[: out.size].astype(np.float32)
    if "phone" in kind:
        out = resample(telephone(resample(out, 16000, 24000), rng), 24000, 16000)
    return (out / (np.max(np.abs(out)) + 1e-9) * 0.5).astype(np.float32)


def cosines(build: Path, floor: float) -> None:
    """Print the target speakers' cosines to each re-recorded enrollment."""
    from voicepipe.audio import load_audio
    from voicepipe.corpus.engines import SpeakerEncoder
    from voicepipe.corpus.speakers import unit

    voices, _, own = feed_inputs(build)
    enroll = json.loads((build / "out" / "corpus.json").read_text())["params"]["enroll"]
    clips = [load_audio(p, 16000) for p in enroll]
    enc = SpeakerEncoder()
    rng = np.random.default_rng(0)
    cells = []
    for kind in ("as recorded",) + KINDS:
        c = unit(enc.centroid(clips if kind == "as recorded" else [rerecord(w, kind, rng) for w in clips]))
        t = [float(unit(v) @ c) for k, v in voices.items() if v.size and own.get(k, 0.0) > 0]
        a = [float(unit(v) @ c) for k, v in voices.items() if v.size and not own.get(k, 0.0) > 0]
        if not t:
            continue
        cells.append(f"{kind}: T {min(t):.2f}-{max(t):.2f} ({sum(x < floor for x in t)} of {len(t)} under {floor:g})"
                     + (f", a <= {max(a):.2f}" if a else ""))
    print(f"{build.name}: " + " | ".join(cells))


def rebuild(build: Path, kind: str) -> None:
    """Build `build` again from its store with the `kind` copy of its enrollment; print the scores or the error."""
    from voicepipe.audio import load_audio, save_wav
    from voicepipe.corpus.synthetic import build_feed, score_corpus

    params, truth = stored_build(build)
    rng = np.random.default_rng(0)
    root = Path(tempfile.mkdtemp(prefix=f"enroll-{kind.replace('+', '-')}-", dir=build))
    enroll = [str(save_wav(root / "enroll" / Path(p).name, rerecord(load_audio(p, 16000), kind, rng), 16000))
              for p in params["enroll"]]
    try:
        build_feed(truth, root, params["codec_model"], enroll=enroll, store_url=str(build / "store"),
                   separate=params["separate"], separator=params["separator"], workers=2,
                   filters={k: v for k, v in params["filters"].items() if k != "min_target_speaker_sim"})
    except Exception as e:  # noqa: BLE001 (the build's own failure is the result)
        print(f"{build.name} ({kind} enrollment): build failed: {e}")
        return
    sc = score_corpus(root / "out", truth)
    cells = " ".join(f"{k}={v['purity']:.3f}/{v['recall']:.3f}" if v["target_total_s"] else f"{k}={v['speech_s']:.1f}s"
                     for k, v in sc["per_episode"].items())
    print(f"{build.name} ({kind} enrollment): whole {sc['purity']:.3f} / {sc['recall']:.3f}; {cells}")


def main() -> None:
    from voicepipe.corpus.config import FilterConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("builds", nargs="+", type=Path)
    ap.add_argument("--rebuild", choices=KINDS, help="build again with this copy of the enrollment")
    args = ap.parse_args()
    for build in args.builds:
        if args.rebuild:
            rebuild(build, args.rebuild)
        else:
            cosines(build, FilterConfig().min_target_speaker_sim or 0.0)


if __name__ == "__main__":
    main()
