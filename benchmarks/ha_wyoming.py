"""Wyoming benchmark: time to first audio chunk over Home Assistant's protocol, measured by `wyoming-bench` (a
third-party client on PyPI) against voicepipe's Wyoming server (`voicepipe.serve.wyoming`, the code that
`voicepipe serve --wyoming` runs), non-streaming (`synthesize`) and streaming (`synthesize-start/-chunk/-stop`).

The voice is a custom-voice model built like benchmarks/serve.py builds it: the full-size 1.7B architecture with
random bf16 weights (GPU), or the tiny test model (`--tiny`, CPU). Random weights never say EOS, so every sentence
runs to the server's runaway guard (0.2 s of audio per character, at least 5 s): TTFA is what this measures;
total times only say how long forced audio takes.

    python benchmarks/ha_wyoming.py --tiny --device cpu --out /tmp/wy            # CPU, tiny voice
    python benchmarks/ha_wyoming.py --tiny-dir DIR --device cuda --max-frames 125 --out $OUT   # GPU, full size
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _serve_bench():
    spec = importlib.util.spec_from_file_location("bench_serve", ROOT / "benchmarks" / "serve.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def start_wyoming(tts, tiny_dir: Path, port: int, max_batch: int, graphs: bool, max_frames: int | None = None):
    """Engine + WyomingServer (as `voicepipe serve --wyoming` builds them) on an event loop in a thread."""
    from voicepipe.serve.deps import ServeConfig, ServerState
    from voicepipe.serve.engine import EngineConfig, TTSEngine
    from voicepipe.serve.metrics import Metrics
    from voicepipe.serve.registry import Voice
    from voicepipe.serve.wyoming import WyomingServer

    engine = TTSEngine(tts, EngineConfig(max_batch=max_batch, max_len=2048))
    if graphs and engine.use_graphs:
        print(f"CUDA graphs captured in {engine.capture():.1f} s", flush=True)
    engine.start()
    langs = sorted((engine.tc.codec_language_id or {}).keys())
    voice = Voice(name="alice", path=tiny_dir, source="bench:random-weights", engine=engine, speaker="alice",
                  languages=["auto", *langs])  # fmt: skip
    cfg = ServeConfig(voices=["alice"], max_concurrent=max_batch, wyoming_uri=f"tcp://127.0.0.1:{port}",
                      **({"max_frames": max_frames} if max_frames else {}))  # fmt: skip
    state = ServerState(config=cfg, voices={"alice": voice}, ready=True)
    state.metrics = Metrics(queue_depth=lambda: sum(state.waiting.values()), active=lambda: engine.active_count)
    ready, stop = threading.Event(), None

    def run() -> None:
        nonlocal stop

        async def main() -> None:
            nonlocal stop
            stop = asyncio.Event()
            server = await WyomingServer(state, cfg.wyoming_uri).start()
            ready.set()
            await stop.wait()
            await server.stop()

        asyncio.run(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(120), "Wyoming server did not start"
    return engine, state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny test model (CPU)")
    ap.add_argument("--tiny-dir", type=Path, default=None, help="prebuilt voicepipe.models.tiny custom-voice dir")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--port", type=int, default=10299)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-frames", type=int, default=None, help="cap frames per sentence (random weights never "
                    "stop by themselves; TTFA does not depend on it)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    work = Path(tempfile.mkdtemp(prefix="wybench-"))
    serve = _serve_bench()
    tiny_dir = args.tiny_dir
    if tiny_dir is None:
        from voicepipe.models.tiny import build_tiny_custom_voice

        tiny_dir = build_tiny_custom_voice(work / "tiny-alice")
    tts = serve.build_model(args.device, dtype, args.tiny, work, tiny_dir)
    engine, _ = start_wyoming(tts, tiny_dir, args.port, args.max_batch, graphs=args.device != "cpu",
                              max_frames=args.max_frames)
    cmd = [sys.executable, "-c", "from wyoming_bench.cli import main; main()", "tts", f"127.0.0.1:{args.port}",
           "--mode", "both", "--rounds", str(args.rounds), "--warmup", str(args.warmup), "--timeout", "300",
           "--config", '{"voice": "alice"}', "-v"]  # fmt: skip
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    head = (f"# wyoming-bench against voicepipe's Wyoming server: {'tiny' if args.tiny else 'full-size 1.7B'} "
            f"random-weight voice, {dev}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, "
            f"{time.perf_counter() - t0:.0f} s\n")  # fmt: skip
    report = head + res.stdout + (f"\n[stderr]\n{res.stderr[-4000:]}" if res.returncode else "")
    print(report, flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "wyoming_bench.txt").write_text(report)
    engine.stop()
    sys.exit(res.returncode)


if __name__ == "__main__":
    main()
