"""Serving benchmark: voicepipe's engine vs the official qwen-tts generate vs faster-qwen3-tts, same weights, one run.

Full-size Qwen3-TTS-12Hz-1.7B architecture (real config sizes, random bf16 weights, built from the package's own
classes), custom-voice prompt, forced generation length (EOS suppressed: `--frames` frames = frames/12.5 s of audio).
Reports time to first audio (TTFA) p50/p95, per-stream RTF (wall / audio seconds, lower is better) and aggregate
throughput (audio seconds per wall second, "x real time") at 1, 4 and 16 concurrent streams.

    python benchmarks/serve.py --out /tmp/bench --tiny-dir DIR   # GPU: numerics, baseline, voicepipe, HTTP, faster
    python benchmarks/serve.py --tiny --systems voicepipe,official --concurrency 1,2 --frames 12   # CPU smoke

Systems (`--systems`): `numerics` (bf16 engine vs an fp32 copy, teacher-forced, a few frames), `baseline` (the
engine without the speed levers: eager frame-step units and eager codec decode, still CUDA graphs), `voicepipe`
(every lever on: compiled units, graphed codec), `http` (`voicepipe serve`'s app in-process over loopback HTTP:
time to first byte), `faster` (faster-qwen3-tts at every `--chunk`), `official`, `autotune` (the voicepipe engine
with inductor's max-autotune and coordinate-descent tuning for its units: a lever under test, minutes of compile),
`gemv-off` (the voicepipe engine with `EngineConfig.small_gemv` off: cuBLAS for every matmul of the step, measured
right after `voicepipe`, whose small matmuls go through the Triton GEMV), `chunk12` (the voicepipe engine with
`chunk_frames` 12, the default before 2026-12-03, instead of 24 once a stream is under way: each codec window then
decodes 12 new frames with the same 25 frames of left context, 3.1 instead of 2.0 frames decoded per frame of
audio; measured right after `voicepipe`), `fused-off` (the voicepipe engine with `EngineConfig.fused_predictor`
off: a 1-2 row step runs the code predictor's layers as the compiled unfused unit instead of five Triton kernels
each; with `numerics`, its bf16-vs-fp32 check is run too), `sample-off` (the engine with
`EngineConfig.fused_sample` off: the 16 codes of a step sampled by the unfused top-k / softmax / race ops),
`host-sync` (the engine with `EngineConfig.overlap_host` off: each step's codes are read before the next step is
launched, so the GPU waits while the host polls, emits audio and retires requests), `fused2` (the engine with
`EngineConfig.fused_rows` 2: only steps of 1-2 rows run the fused predictor layer; the default, 16, runs it in its
tl.dot form above 2 rows), `codec-unfused` (the engine with `EngineConfig.codec_fused` off: the codec decoder's
SnakeBeta activations and causal padding as the package's modules). A setting whose effect is process-wide
(cuDNN's algorithm cache: `codec_cudnn_benchmark`) is compared across two processes instead, with `--engine-set
key=value,...` on every engine of the second. `--lever NAME:key=value;key=value` (repeatable): another engine with
those EngineConfig settings, measured after the named systems (`voicepipe-NAME`). The first engine of a process is
measured first and was seen to split a 16-stream burst into two prefills once in four rounds where later engines did
not (2026-12-04): compare levers with a second engine of the default settings (a `--lever` that sets a default), not
with the first.

How each system serves N concurrent requests:
- voicepipe: N requests submitted at once to one engine (continuous batching, CUDA graphs, streaming decode).
- official: one `generate_custom_voice` call with a batch of N texts (its own batching), no streaming: TTFA = time
  to the whole waveform.
- faster-qwen3-tts: no batching (one static cache and graph set per model), so N requests are served one after the
  other; each request's TTFA counts from the moment all N arrived. Streaming with `chunk_size` frames per chunk.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import importlib.machinery
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TEXT = ("Ladies and gentlemen, this speech is being generated faster than I can say it, on one graphics card, "
        "with no cloud in sight.")

TALKER_1P7B = dict(
    vocab_size=3072, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
    num_key_value_heads=8, head_dim=128, rope_theta=1_000_000, max_position_embeddings=32768,
    rope_scaling={"rope_type": "default", "mrope_section": [24, 20, 20], "interleaved": True},
    text_hidden_size=2048, text_vocab_size=151936, num_code_groups=16,
)  # fmt: skip
PREDICTOR_1P7B = dict(
    vocab_size=2048, hidden_size=1024, intermediate_size=3072, num_hidden_layers=5, num_attention_heads=16,
    num_key_value_heads=8, head_dim=128, rope_theta=1_000_000, max_position_embeddings=65536, num_code_groups=16,
)  # fmt: skip
# The codec decoder at the package's class-default sizes (8-layer sliding-window transformer, 1536-wide upsampler);
# codebook_dim 512 as in the released tokenizer config (not verified here); the encoder is tiny (decode only).
CODEC_DECODER = dict(codebook_dim=512, codebook_size=2048, num_quantizers=16)


def _stub_unused_audio_deps() -> None:
    """qwen_tts imports librosa/sox at module level for voice-clone/25 Hz paths the custom-voice path never calls.

    The GPU image lacks them; stand-ins let the package import there. Real installs are used when present.
    """
    for name in ("librosa", "sox", "soxr"):  # soxr: transformers imports it when librosa looks installed
        try:
            __import__(name)
        except ImportError:
            mod = types.ModuleType(name)
            mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
            if name == "librosa":
                filters = types.ModuleType("librosa.filters")
                filters.__spec__ = importlib.machinery.ModuleSpec("librosa.filters", None)
                filters.mel = None  # type: ignore[attr-defined]
                mod.filters = filters  # type: ignore[attr-defined]
                sys.modules["librosa.filters"] = filters
            sys.modules[name] = mod


def build_model(device: str, dtype: torch.dtype, tiny: bool, workdir: Path, tiny_dir: Path | None = None):
    """A custom-voice `Qwen3TTSModel` (speaker 'alice'): full 1.7B sizes unless `tiny`; random weights.

    The tiny custom-voice dir supplies the text tokenizer/processor, special ids and codec layout; it is built here
    unless `tiny_dir` is given (building it needs librosa, which the GPU image lacks: build it on the CPU box).
    """
    from voicepipe.models import apply_compat

    if tiny_dir is None:
        from voicepipe.models.tiny import build_tiny_custom_voice

        tiny_dir = build_tiny_custom_voice(workdir / "tiny-alice")
    _stub_unused_audio_deps()
    apply_compat()
    from qwen_tts import Qwen3TTSModel

    # what voicepipe.models.load_tts does, minus settings resolution (no pydantic on the GPU image)
    kw = dict(device_map=device) if device != "cpu" else {}
    tts = Qwen3TTSModel.from_pretrained(str(tiny_dir), dtype=dtype, attn_implementation="sdpa", local_files_only=True,
                                        **kw)
    if tiny:
        return tts
    from qwen_tts.core import Qwen3TTSTokenizerV2Config, Qwen3TTSTokenizerV2Model
    from qwen_tts.core.models import Qwen3TTSConfig, Qwen3TTSForConditionalGeneration

    cfg = json.loads((tiny_dir / "config.json").read_text())
    talker = dict(cfg["talker_config"])
    talker.update(TALKER_1P7B, code_predictor_config=PREDICTOR_1P7B)
    cfg["talker_config"] = talker
    cfg["tts_model_size"] = "1b7"
    config = Qwen3TTSConfig(**{k: v for k, v in cfg.items() if not k.startswith(("_", "architectures", "dtype",
                                                                                    "transformers_version"))})
    for c in (config, config.talker_config, config.talker_config.code_predictor_config):
        c._attn_implementation = "sdpa"
    t0 = time.perf_counter()
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(device):
        net = Qwen3TTSForConditionalGeneration(config).eval()
        codec_cfg = tts.model.speech_tokenizer.model.config.to_dict()
        codec_cfg["decoder_config"] = {k: v for k, v in Qwen3TTSTokenizerV2Config().decoder_config.to_dict().items()
                                       if not k.startswith("_")}
        codec_cfg["decoder_config"].update(CODEC_DECODER)
        codec = Qwen3TTSTokenizerV2Model(Qwen3TTSTokenizerV2Config(**{k: v for k, v in codec_cfg.items()
                                                                       if not k.startswith("_")})).eval()
    torch.set_default_dtype(prev)
    # speaker row 3000 as a fine-tune writes it
    with torch.no_grad():
        net.talker.model.codec_embedding.weight[3000].normal_(0, 0.02)
    st = tts.model.speech_tokenizer
    st.model, st.config = codec, codec.config
    net.load_speech_tokenizer(st)
    net.load_generate_config(tts.model.generate_config)
    tts.model = net
    n = sum(p.numel() for p in net.parameters())
    nc = sum(p.numel() for p in codec.parameters())
    dt = time.perf_counter() - t0
    print(f"built 1.7B-size model: {n / 1e6:.1f} M params (+ codec {nc / 1e6:.1f} M) in {dt:.1f} s", flush=True)
    return tts


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def summarize(system: str, conc: int, ttfa: list[float], rtf: list[float], audio_s: float, wall: float) -> dict:
    return dict(system=system, concurrency=conc, n=len(ttfa), ttfa_p50_ms=1000 * statistics.median(ttfa),
                ttfa_p95_ms=1000 * _pct(ttfa, 0.95), rtf_mean=statistics.mean(rtf), x_realtime=audio_s / wall)


def engine_counts(eng, before: tuple[int, int, int], runs: int) -> dict:
    """Prefills and codec decode calls the engine ran per round of requests since `before` (how a burst was
    admitted, and whether its chunks were decoded together), and the codec graphs captured meanwhile (a window
    shape met for the first time, paid inside a request)."""
    return dict(prefills_per_round=(eng.prefills - before[0]) / runs,
                decode_calls_per_round=(eng.decode_calls - before[1]) / runs,
                codec_captures=eng.codec_captures - before[2])


def _timed(fn, n: int) -> float:
    fn()
    _sync()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    _sync()
    return 1000 * (time.perf_counter() - t0) / n


def profile_engine(eng) -> dict:
    """Component timings (ms): one graphed frame step per batch size, eager step, prefill, codec decode."""
    prompt = eng.prepare(TEXT, speaker="alice", language="english")
    prof = {"prompt_tokens": int(prompt.embeds.shape[0])}
    # what a server request pays before the engine sees it (tokenizer, prompt layout, text embedding on the GPU)
    prof["prepare_ms"] = _timed(lambda: eng.prepare(TEXT, speaker="alice", language="english"), 5)
    b0 = eng._batch_buckets()[0]
    with torch.inference_mode():
        graphed = eng.prefill_graphed and bool(eng.__dict__.get("_prefill_graphs"))
        setting = eng.cfg.prefill_graphs
        for sfx, on in (("", setting), ("_eager", False)) if graphed else (("", setting),):
            eng.cfg.prefill_graphs = on  # _eager: the same engine's prefill without its graphs
            prof[f"prefill{sfx}_ms"] = _timed(lambda: eng._prefill([0], [prompt]), 3)
            prof[f"prefill_x16{sfx}_ms"] = _timed(lambda: eng._prefill(list(range(16)), [prompt] * 16), 3) \
                if eng.cfg.max_batch >= 16 else float("nan")
        if eng.cfg.max_batch >= 16:
            # 16 different texts of TEXT's length, as an HTTP burst sends them (`short_text`), against one prompt 16
            # times above: in the H200 bursts the (16, 96) graph took 13.6-15.3 ms against 11.9 here (2026-12-04)
            distinct = [eng.prepare(short_text(k), speaker="alice", language="english") for k in range(16)]
            prof["prefill_x16_distinct_ms"] = _timed(lambda: eng._prefill(list(range(16)), distinct), 3)
        eng.cfg.prefill_graphs = setting
        if graphed and eng.cfg.max_batch >= 16 and torch.cuda.is_available():
            try:
                prof |= prefill_ab(eng, prompt, distinct)
            except Exception as e:  # noqa: BLE001 - diagnostics only
                print(f"prefill A/B failed: {type(e).__name__}: {e}", flush=True)
        if graphed:
            prof |= prefill_parity(eng)
        if torch.cuda.is_available():
            prof |= sync_probe(eng, prompt)
        for (b, L), g in sorted(eng._graphs.items()):
            if L == min(k[1] for k in eng._graphs):
                eng.pos.zero_()
                prof[f"step_graph_b{b}_ms"] = _timed(g.replay, 20)
        eng.pos.zero_()
        prof[f"step_eager_b{b0}_ms"] = _timed(lambda: eng._step(b0, 256), 3)
        # what one frame step launches (its graph replays exactly these kernels), at one stream's bucket and at 16
        for b, sfx in ((b0, ""), (16, "_b16")):
            if b > eng.cfg.max_batch:
                continue
            try:
                from torch.profiler import ProfilerActivity, profile

                if not torch.cuda.is_available():
                    raise RuntimeError("no CUDA")
                eng.pos.zero_()
                with profile(activities=[ProfilerActivity.CUDA]) as p:
                    eng._step(b, 256)
                    _sync()
                kernels = [e for e in p.events() if e.device_type.name == "CUDA"]
                prof[f"step_kernels{sfx}"] = len(kernels)
                prof[f"step_kernel_time_ms{sfx}"] = sum(e.device_time for e in kernels) / 1000
                top = collections.Counter()
                count = collections.Counter()
                for e in kernels:
                    top[e.name[:60]] += e.device_time
                    count[e.name[:60]] += 1
                print(f"top kernels at {b} rows (us, calls):",
                      [(k, round(v), count[k]) for k, v in top.most_common(16)], flush=True)
                gemm = sum(v for k, v in top.items()
                           if any(x in k.lower() for x in ("gemm", "gemv", "sm90", "cutlass")))
                prof[f"step_matmul_time_ms{sfx}"] = gemm / 1000
            except Exception as e:  # noqa: BLE001 - diagnostics only
                print("kernel profile skipped:", type(e).__name__, e, flush=True)
        dec = eng.model.speech_tokenizer.model.decoder
        dev = next(dec.parameters()).device
        for shape in ((1, 2), (1, 10), (1, 37), (4, 37), (16, 37), (16, 1), (16, 2)):
            codes = torch.randint(0, 2048, (*shape, 16))
            prof[f"decode_{shape[0]}x{shape[1]}f_ms"] = _timed(lambda c=codes: eng._decode(c), 3)
            x = codes.to(dev).transpose(1, 2)
            prof[f"decode_eager_{shape[0]}x{shape[1]}f_ms"] = _timed(lambda x=x: dec(x), 3)
        eng.pos.zero_()
        eng.active.zero_()
    print("profile:", {k: round(v, 2) if isinstance(v, float) else v for k, v in prof.items()}, flush=True)
    return prof


def _gpu_ms(fn, n: int) -> float:
    """Median GPU time (ms, CUDA events around each call) of n calls, after one unmeasured."""
    fn()
    times = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def _kernels(fn, label: str) -> dict:
    """The CUDA kernels one call of fn runs (torch.profiler): count, summed time (ms), matmul time, the top 12."""
    from torch.profiler import ProfilerActivity, profile

    _sync()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        fn()
        _sync()
    ks = [e for e in p.events() if e.device_type.name == "CUDA"]
    top, count = collections.Counter(), collections.Counter()
    for e in ks:
        top[e.name[:70]] += e.device_time
        count[e.name[:70]] += 1
    gemm = sum(v for k, v in top.items() if any(x in k.lower() for x in ("gemm", "gemv", "sm90", "cutlass", "nvjet")))
    print(f"{label}: {len(ks)} kernels, {sum(e.device_time for e in ks) / 1000:.2f} ms, matmuls {gemm / 1000:.2f} ms;"
          f" top (us, calls): {[(k, round(v), count[k]) for k, v in top.most_common(12)]}", flush=True)
    return {f"{label}_kernels": len(ks), f"{label}_kernel_ms": sum(e.device_time for e in ks) / 1000,
            f"{label}_matmul_ms": gemm / 1000}


def prefill_ab(eng, prompt, distinct: list) -> dict:
    """The 16-prompt prefill on the GPU (CUDA events) of 16 different texts (an HTTP burst's), for the prefill's
    layers compiled or eager (`EngineConfig.prefill_compile`) and length buckets of 8 or 32 tokens
    (`prefill_len_step`), each as its graph, alternating; one prompt 16 times and the graph replay alone; the real
    against the bucket's tokens; the kernels of each layer kind, and the K/V difference between them."""
    out: dict = {}
    lens = [int(p.embeds.shape[0]) - 1 for p in distinct]
    setting, step0 = eng.cfg.prefill_compile, eng.cfg.prefill_len_step
    slots = list(range(16))
    snaps = {}
    confs = [(c, st) for c in (False, True) for st in (8, 32)]

    def sfx(c: bool, st: int) -> str:
        return f"{'_compiled' if c else '_eager'}_len{st}"

    try:
        for c, st in confs:
            eng.cfg.prefill_compile, eng.cfg.prefill_len_step = c, st
            key = eng._prefill_key(16, max(lens))
            out[f"prefill_x16_bucket{sfx(c, st)}"] = f"{key[0]}x{key[1]}"
            out[f"prefill_x16_padding{sfx(c, st)}"] = 1 - sum(lens) / (key[0] * key[1])
            t0 = time.perf_counter()
            eng.capture_prefill(keys=[key, eng._prefill_key(16, int(prompt.embeds.shape[0]) - 1),
                                      eng._prefill_key(1, int(prompt.embeds.shape[0]) - 1)])
            out[f"prefill_capture_s{sfx(c, st)}"] = time.perf_counter() - t0
        print(f"prefill of 16 distinct prompts: lengths {sorted(lens)}, real tokens {sum(lens)}", flush=True)
        for r in range(3):  # alternating, so that no setting always runs first
            for c, st in (confs if r % 2 == 0 else confs[::-1]):
                eng.cfg.prefill_compile, eng.cfg.prefill_len_step = c, st
                g = eng._prefill_graphs[(*eng._prefill_key(16, max(lens)), c)]
                for name, fn in ((f"prefill_x16_distinct_gpu_ms{sfx(c, st)}", lambda: eng._prefill(slots, distinct)),
                                 (f"prefill_x16_replay_gpu_ms{sfx(c, st)}", g.replay),
                                 (f"prefill_x16_same_gpu_ms{sfx(c, st)}", lambda: eng._prefill(slots, [prompt] * 16)),
                                 (f"prefill_x1_gpu_ms{sfx(c, st)}", lambda: eng._prefill([0], [prompt]))):
                    out.setdefault(name, []).append(_gpu_ms(fn, 5))
        out = {k: (statistics.median(v) if isinstance(v, list) else v) for k, v in out.items()}
        eng.cfg.prefill_len_step = 8
        for c in (False, True):
            eng.cfg.prefill_compile = c
            eng._prefill(slots, distinct)
            _sync()
            snaps[c] = [kv[s, :, :n].float() for kv in eng.kc + eng.vc for s, n in zip(slots, lens, strict=True)]
            cfg_graphs = eng.cfg.prefill_graphs
            eng.cfg.prefill_graphs = False  # the layers' own kernels (eager launches of the same ops)
            try:
                out |= _kernels(lambda: eng._prefill(slots, distinct), f"prefill_x16{'_compiled' if c else '_eager'}")
            finally:
                eng.cfg.prefill_graphs = cfg_graphs
        diff = max(float((a - b).abs().max()) for a, b in zip(snaps[False], snaps[True], strict=True))
        num = sum(float((a - b).pow(2).sum()) for a, b in zip(snaps[False], snaps[True], strict=True))
        den = sum(float(a.pow(2).sum()) for a in snaps[False])
        out["prefill_compiled_kv_max_diff"], out["prefill_compiled_kv_rel_err"] = diff, (num / den) ** 0.5
        print(f"prefill compiled vs eager layers: K/V max diff {diff:.4g}, relative error "
              f"{out['prefill_compiled_kv_rel_err']:.3g}", flush=True)
    finally:
        eng.cfg.prefill_compile, eng.cfg.prefill_len_step = setting, step0
        eng.pos.zero_()
        eng.active.zero_()
    print("prefill A/B:", {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}, flush=True)
    return out


def prefill_parity(eng) -> dict:
    """The graphed prefill (padded to its bucket) against the eager one on three prompts of different lengths in
    slots 0-2 (the engine idle, not started): K/V of every real position bitwise equal, and the largest difference.
    An engine of fewer slots takes as many of the prompts as it has slots (slot 1 of a one-slot engine is out of its
    caches' bounds: on CUDA a device-side assert, 2026-12-06)."""
    texts = [TEXT, "Hello there.", f"{TEXT} {TEXT}"][:eng.cfg.max_batch]
    prompts = [eng.prepare(t, speaker="alice", language="english") for t in texts]
    lens = [p.embeds.shape[0] - 1 for p in prompts]
    snaps = []
    before = eng.cfg.prefill_graphs
    for on in (False, True):
        eng.cfg.prefill_graphs = on
        eng._prefill(list(range(len(prompts))), prompts)
        _sync()
        snaps.append([c[s, :, :n].clone() for c in eng.kc + eng.vc for s, n in enumerate(lens)])
    eng.cfg.prefill_graphs = before
    eq = all(torch.equal(a, b) for a, b in zip(*snaps, strict=True))
    diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(*snaps, strict=True))
    key = eng._prefill_key(len(lens), max(lens))
    print(f"prefill graph vs eager: key {key}, K/V bitwise equal {eq}, max diff {diff}", flush=True)
    return {"prefill_graph_kv_equal": float(eq), "prefill_graph_kv_max_diff": diff}


def sync_probe(eng, prompt) -> dict:
    """Host syncs (torch.cuda.set_sync_debug_mode warnings) of one slot's state written with a Python scalar (as the
    per-slot admission did), of the batched admission writes for 16 slots, and of a 16-prompt prefill."""
    import warnings

    from voicepipe.serve.engine import GenerationConfig

    n = min(16, eng.cfg.max_batch)
    cases = {"sync_scalar_setitem": lambda: eng.pos.__setitem__(0, 5),
             f"sync_arm_many_x{n}": lambda: eng._arm_many(list(range(n)), [GenerationConfig()] * n),
             f"sync_prefill_x{n}": lambda: eng._prefill(list(range(n)), [prompt] * n)}
    out = {}
    for name, fn in cases.items():
        _sync()
        torch.cuda.set_sync_debug_mode(1)
        try:
            with warnings.catch_warnings(record=True) as got:
                warnings.simplefilter("always")
                fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        out[name] = len(got)
        if got:
            print(f"{name}: {len(got)} sync(s), first: {str(got[0].message)[:160]}", flush=True)
    eng.active.zero_()
    eng.pos.zero_()
    return out


def prefill_codes_parity(eng) -> bool:
    """A started engine's greedy codes for three prompts admitted together, prefilled eagerly and as a graph."""
    from voicepipe.serve.engine import GenerationConfig

    gen = GenerationConfig(max_new_tokens=16, min_new_tokens=16, do_sample=False, subtalker_do_sample=False)
    prompts = [eng.prepare(t, speaker="alice", language="english") for t in (TEXT, "Hello there.", f"{TEXT} {TEXT}")]
    out, before = [], eng.cfg.prefill_graphs
    for on in (False, True):
        eng.cfg.prefill_graphs = on
        with eng._step_lock:  # queued together: one prefill
            hs = [eng.submit(p, gen, lambda ev: None) for p in prompts]
        for h in hs:
            h.finished.wait()
        out.append([torch.stack(h.frames) for h in hs])
    eng.cfg.prefill_graphs = before
    same = all(torch.equal(a, b) for a, b in zip(*out, strict=True))
    print(f"prefill graph vs eager: greedy codes of 3 prompts x 16 frames equal: {same}", flush=True)
    return same


ENGINE_SET: dict = {}  # --engine-set: settings every engine of this process gets


def make_engine(tts, max_batch: int, **overrides):
    from voicepipe.serve.engine import EngineConfig, TTSEngine

    return TTSEngine(tts, EngineConfig(**{"max_batch": max_batch, "max_len": 512, **ENGINE_SET, **overrides}))


SEEDED_CODES: dict[str, torch.Tensor] = {}  # per engine measured: one stream's sampled codes for seed 1234


def bench_voicepipe(tts, frames: int, concs: list[int], repeats: dict[int, int], max_batch: int,
                    name: str = "voicepipe", eng=None, profile: dict | None = None, **overrides) -> list[dict]:
    from voicepipe.serve.engine import GenerationConfig

    eng = eng or make_engine(tts, max_batch, **overrides)
    t0 = time.perf_counter()
    cap = eng.capture()
    print(f"{name}: graphs={eng.use_graphs} compiled={eng.compiled} codec_graphs={eng._codec_graphed} "
          f"small_gemv={eng.small_gemv} fused={eng.fused_predictor} head={eng.fused_head} "
          f"split_k={eng.cfg.fused_split_k} chunk={eng.cfg.chunk_frames} first_chunk={eng.cfg.first_chunk_frames} "
          f"prefill_graphs={len(eng.__dict__.get('_prefill_graphs', {}))} compile_failed={eng._compile_failed} "
          f"captured in {cap:.1f} s ({time.perf_counter() - t0:.1f} s), "
          f"{eng.codec_captures} codec graphs", flush=True)
    if getattr(eng, "codec_capture_ms", None):  # what a window shape met for the first time costs (step lock held)
        cms = sorted(eng.codec_capture_ms)
        print(f"  codec graph captures (ms): min {cms[0]:.0f}, median {cms[len(cms) // 2]:.0f}, max {cms[-1]:.0f}",
              flush=True)
    prof = profile_engine(eng)
    if profile is not None:
        profile[name] = prof
    eng.start()
    prompt = eng.prepare(TEXT, speaker="alice", language="english")
    gen = GenerationConfig(max_new_tokens=frames, min_new_tokens=frames)
    warm = GenerationConfig(max_new_tokens=frames, min_new_tokens=frames)
    for c in sorted(set(concs)):  # warm every batch bucket and every codec window shape once
        hs = [eng.submit(prompt, warm, lambda ev: None) for _ in range(c)]
        for h in hs:
            h.finished.wait()
    if profile is not None and eng.prefill_graphed and eng.__dict__.get("_prefill_graphs"):
        profile[name]["prefill_graph_codes_equal"] = float(prefill_codes_parity(eng))
    if profile is not None:  # one stream's sampled codes for a seed: a lever that keeps the codes gives these
        torch.manual_seed(1234)
        SEEDED_CODES[name] = eng.generate_codes(prompt, GenerationConfig(max_new_tokens=32, min_new_tokens=32)).cpu()
        first = next(iter(SEEDED_CODES))
        same = torch.equal(SEEDED_CODES[name], SEEDED_CODES[first])
        profile[name]["seeded_codes_equal_first"] = float(same)
        print(f"{name}: one stream's sampled codes (seed 1234, 32 frames) equal to {first}'s: {same}", flush=True)
    out = []
    for c in concs:
        ttfa, rtf, audio, walls = [], [], 0.0, 0.0
        per_round: list[float] = []  # each round's aggregate x real time: one slow round shows itself
        counts = (eng.prefills, eng.decode_calls, eng.codec_captures)
        rounds = max(repeats.get(c, 1), 5 if c == 1 else 1)
        for _ in range(rounds):
            done = threading.Event()
            results: list[dict] = []
            lock = threading.Lock()

            def on_event(ev, _r=results, _l=lock, _d=done, _c=c):
                if ev.kind == "done":
                    with _l:
                        _r.append(ev.stats)
                        if len(_r) == _c:
                            _d.set()
                elif ev.kind == "error":
                    print("voicepipe request failed:", ev.message, flush=True)
                    _d.set()

            _sync()
            t0 = time.perf_counter()
            for _ in range(c):
                eng.submit(prompt, gen, on_event)
            done.wait()
            wall = time.perf_counter() - t0
            if c == 1:
                print("  milestones (ms since submit):", results[0].get("marks_ms"), flush=True)
            for s in results:
                ttfa.append(s["ttfa_s"])
                rtf.append(s["wall_s"] / s["audio_s"])
                audio += s["audio_s"]
            per_round.append(round(sum(s["audio_s"] for s in results) / wall, 1))
            walls += wall
        out.append(summarize(name, c, ttfa, rtf, audio, walls) | engine_counts(eng, counts, rounds)
                   | {"x_realtime_rounds": per_round})
        print(out[-1], flush=True)
    eng.stop()
    return out


def numerics(tts, e16, frames: int = 4) -> dict:
    """The bf16 engine `e16` (its units as configured: compiled on CUDA) vs an fp32 copy of the same weights,
    teacher-forced (never started; slots 0-1, or the one slot of a one-slot engine, are used and left idle): both
    see the fp32 run's inputs every frame. Reports per frame the relative error of the talker output and its code-0
    logits, and how many of the 16 greedy codes agree."""
    import types as _types

    from voicepipe.serve.engine import GenerationConfig, Prompt

    talker = tts.model.talker
    with torch.device(talker.device):
        t32 = type(talker)._from_config(talker.config, dtype=torch.float32).eval()
    t32.load_state_dict({k: v.float() for k, v in talker.state_dict().items()})
    m32 = _types.SimpleNamespace(talker=t32, config=tts.model.config, speech_tokenizer=None)
    e32 = make_engine(_types.SimpleNamespace(model=m32, processor=tts.processor), 2, cuda_graphs=False,
                      compile=False, codec_graphs=False, decode_thread=False)
    greedy = GenerationConfig(do_sample=False, subtalker_do_sample=False)
    rows = []
    with torch.inference_mode():
        p32 = e32.prepare(TEXT, speaker="alice", language="english")
        p16 = Prompt(p32.embeds.to(e16.dtype), p32.trailing.to(e16.dtype))
        n = min(2, e16.cfg.max_batch)
        for e, p in ((e32, p32), (e16, p16)):
            e._prefill(list(range(n)), [p] * n)
            for slot in range(n):
                e._arm(slot, greedy)
        for f in range(frames):
            e32._step(n, 256)
            e16._step(n, 256)
            h32, h16 = e32._last_hidden[0].double(), e16._last_hidden[0].double()
            l32 = e32.talker.codec_head(e32._last_hidden[:1]).double()[0]
            l16 = e16.talker.codec_head(e16._last_hidden[:1]).double()[0]
            c32, c16 = e32.out_codes[0].cpu(), e16.out_codes[0].cpu()
            rows.append(dict(frame=f, hidden_rel_err=float((h16 - h32).norm() / h32.norm()),
                             logits_rel_err=float((l16 - l32).norm() / l32.norm()),
                             code0_same=bool(c32[0] == c16[0]), codes_same=int((c32 == c16).sum())))
            e16.next_emb[:n] = e32.next_emb[:n].to(e16.dtype)  # teacher forcing
            e16.pos[:n] = e32.pos[:n]
    print("numerics bf16 vs fp32:", rows, flush=True)
    e16.pos.zero_()
    e16.active.zero_()
    del e32, m32
    torch.cuda.empty_cache()
    return {"frames": rows}


def varied_text(k: int) -> str:
    """TEXT lengthened by k words: burst k's prompt length is new to the process (as real clients' texts are).
    From k = 61 on it is longer than the server's default 300-character segment: `bench_http` raises
    `ServeConfig.segment_chars` for these texts, so each request stays one segment (one engine request)."""
    return TEXT if k == 0 else f"{TEXT} And {' '.join(['so'] * k)}."


def short_text(k: int) -> str:
    """A new text for burst k at about TEXT's length (100-101 tokens prefilled, against TEXT's 92 and 92 + ~2 per
    burst for `varied_text`, whose 16-prompt prefill grows with the run; 2026-12-04 20:21 UTC, `prefill_ab`)."""
    return f"{TEXT} Take {k}."


def bench_http(eng, frames: int, formats: list[str], concs: list[int], repeats: dict[int, int],
               variants: list[tuple[str, dict]], varied: bool = False) -> list[dict]:
    """`voicepipe serve`'s app (the same routers and encoders), in-process with uvicorn on loopback, over an engine
    already captured; time to first byte of a streamed /v1/audio/speech response, and its whole duration, as seen
    by clients in another process (`HTTP_CLIENT`: asyncio + httpx; in-process client threads would share the
    server's and the engine's GIL and be measured with them).

    `variants` are (label, EngineConfig overrides) measured against one another in the same server: each round
    runs one burst of every (variant, format, concurrency) level, and the order of the variants and of the formats
    is reversed every other round (A B, B A, A B, ...), so neither one always runs first. A level with `c` streams
    gets `repeats[c]` rounds (5 at one stream, 1 otherwise, when not given); every burst's own p50 is kept in the
    row (`burst_p50_ms`, in the order run), so the spread between bursts is visible beside the pooled p50, with the
    batch size and host time of each prefill that admitted it (`burst_prefills`). Round 0 first runs one unmeasured
    burst of every concurrency level per variant and format (warm-up). `varied`: every burst, warm-up included,
    sends its own text (`varied_text`), one word longer than the one before, so each prefill meets a prompt length
    the process has not seen; otherwise every request sends TEXT."""
    import socket

    import uvicorn

    from voicepipe.serve.app import create_app
    from voicepipe.serve.deps import ServeConfig
    from voicepipe.serve.registry import Voice

    voice = Voice(name="alice", path=Path("."), source="bench", engine=eng, speaker="alice", languages=["english"])
    cfg = ServeConfig(voices=["alice"], max_concurrent=eng.cfg.max_batch, max_frames=frames, max_len=eng.cfg.max_len,
                      generation={"max_new_tokens": frames, "min_new_tokens": frames},
                      **({"segment_chars": 2000} if varied else {}))
    app = create_app(cfg.model_copy(), voices={"alice": voice})
    from voicepipe.serve.http import uvicorn_config

    live: dict = {"stack": None}  # the running server, its thread, url and HTTP stack (parser, loop)

    def serve_with(stack: tuple[str, str]) -> None:
        """(Re)start the server as `voicepipe serve` configures it, with this (http parser, event loop); the
        engine and the app stay the same."""
        if live["stack"] == stack:
            return
        if live["stack"] is not None:
            live["server"].should_exit = True
            live["thread"].join(timeout=10)
        with socket.socket() as sk:
            sk.bind(("127.0.0.1", 0))
            port = sk.getsockname()[1]
        ucfg = uvicorn_config(app, "127.0.0.1", port, log_level="warning", http=stack[0])
        ucfg.loop = stack[1]
        server = uvicorn.Server(ucfg)
        th = threading.Thread(target=server.run, daemon=True)
        th.start()
        while not server.started:
            time.sleep(0.05)
        live.update(stack=stack, server=server, thread=th, url=f"http://127.0.0.1:{port}/v1/audio/speech")

    serve_with((variants[0][1].get("http", "auto"), variants[0][1].get("loop", "auto")))

    bursts = iter(range(1, 10**6))
    text_mode = {"short": False}  # a variant's "short_texts": new texts of about TEXT's length (short_text)
    client_mode = {"procs": False}  # a variant's "client_procs": one client process per request (HTTP_CLIENT_PROCS)

    def clients(fmt: str, c: int, runs: int) -> tuple[list[float], list[float], float]:
        """`c` concurrent streamed requests, `runs` times, from a separate client process (as a voice assistant
        is): (time to first byte per request, whole duration per request, summed wall of the runs)."""
        k = next(bursts)
        text = (short_text(k) if text_mode["short"] else varied_text(k)) if varied else TEXT
        body = {"model": "voicepipe", "input": text, "voice": "alice", "response_format": fmt,
                "stream_format": "audio", "language": "english"}
        script = HTTP_CLIENT_PROCS if client_mode["procs"] else HTTP_CLIENT
        cmd = [sys.executable, "-c", script, live["url"], json.dumps(body), str(c), str(runs)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            raise RuntimeError(res.stderr.strip()[-500:])
        r = json.loads(res.stdout.strip().splitlines()[-1])
        return r["ttfb"], r["wall"], r["elapsed"]

    from fastapi import Request

    from voicepipe.serve import deps, synth

    real_wait = synth.SpeechJob._wait_admitted
    switch_ms = 1e3 * sys.getswitchinterval()  # as the started engine set it (0.5 ms)
    import gc

    gc_threshold = gc.get_threshold()  # the process's (Python's default (700, 10, 10) unless the app set others)

    async def polled_wait(self, timeout_s: float) -> None:  # the admission wait as it was: polled every 5 ms
        deadline = time.perf_counter() + timeout_s
        while not self.current.admitted.is_set():
            if self.current.finished.is_set():
                return
            if time.perf_counter() > deadline:
                raise synth.busy("no generation slot", 1.0, "queue_timeout")
            await asyncio.sleep(0.005)

    def sync_auth(request: Request) -> None:  # the auth dependency as it was: a plain def, run in a worker thread
        if not deps.authorized(deps.get_state(request).config.api_key, request.headers.get("authorization")):
            raise deps.ApiError(401, deps.AUTH_ERROR, type="authentication_error", code="invalid_api_key")

    sync_auth.__annotations__["request"] = Request  # this module's annotations are strings FastAPI cannot resolve

    def legacy_host(on: bool) -> None:
        """The request path before the 2026-12-03 19:xx changes (issue 17): auth dependency in a worker thread, the
        processor's tokenizer path, admission polled every 5 ms; off: the current code."""
        if on:
            app.dependency_overrides[deps.require_auth] = sync_auth
            eng._fast_tokens = False
            synth.SpeechJob._wait_admitted = polled_wait
        else:
            app.dependency_overrides.pop(deps.require_auth, None)
            eng.__dict__.pop("_fast_tokens", None)
            synth.SpeechJob._wait_admitted = real_wait

    def per_slot_arm(slots, gens):  # the admitted slots' sampling state as it was: 9 writes per slot
        for slot, gen in zip(slots, gens, strict=True):
            eng.seen[slot] = False
            eng.n_sampled[slot] = 0
            eng.min_new[slot] = gen.min_new_tokens
            eng.temp[slot] = max(gen.temperature, 1e-5)
            eng.greedy[slot] = not gen.do_sample
            eng.sub_temp[slot] = max(gen.subtalker_temperature, 1e-5)
            eng.sub_greedy[slot] = not gen.subtalker_do_sample
            eng.rep_pen[slot] = gen.repetition_penalty
            eng.active[slot] = 1

    def configure(overrides: dict) -> None:
        """Engine settings (EngineConfig fields), server settings (ServeConfig fields, e.g. prepare_threads),
        `legacy_host` and `per_slot_arm`; server settings not named go back to the bench's config."""
        serve_with((overrides.get("http", "auto"), overrides.get("loop", "auto")))
        legacy_host(bool(overrides.get("legacy_host")))
        if overrides.get("per_slot_arm"):
            eng._arm_many = per_slot_arm
        else:
            eng.__dict__.pop("_arm_many", None)
        text_mode["short"] = bool(overrides.get("short_texts"))
        client_mode["procs"] = bool(overrides.get("client_procs"))
        gc.set_threshold(overrides.get("gc_gen0", gc_threshold[0]), *gc_threshold[1:])
        sys.setswitchinterval(overrides.get("switch_ms", switch_ms) / 1e3)  # the GIL's hand-over interval
        server_cfg = app.state.vp.config
        for k in ServeConfig.model_fields:
            setattr(server_cfg, k, overrides.get(k, getattr(cfg, k)))
        bench_keys = ("legacy_host", "short_texts", "switch_ms", "per_slot_arm", "gc_gen0", "formats", "http", "loop",
                      "client_procs")
        for k, v in overrides.items():
            if k not in bench_keys and k not in ServeConfig.model_fields:
                setattr(eng.cfg, k, v)

    rounds = {c: max(repeats.get(c, 1), 5 if c == 1 else 1) for c in concs}
    acc: dict[tuple[str, str, int], dict] = {}
    # every prefill's batch size and host time (ms), so a slow burst can be matched to how it was admitted
    prefill_log: list[tuple[int, float]] = []
    real_prefill = eng._prefill

    def logged_prefill(slots, prompts):
        t0 = time.perf_counter()
        try:
            return real_prefill(slots, prompts)
        finally:
            prefill_log.append((len(slots), round(1000 * (time.perf_counter() - t0), 1)))

    eng._prefill = logged_prefill
    # every request's milestones (SpeechJob.marks and its engine handle's marks), for a per-burst timeline
    jobs: list = []
    real_init = synth.SpeechJob.__init__

    def logged_init(self, *args, **kw):
        real_init(self, *args, **kw)
        jobs.append(self)

    synth.SpeechJob.__init__ = logged_init
    # every garbage collection in this process (the server's): generation, pause (ms), objects collected; whether a
    # stalled burst met one (`gc.freeze()` at the app's start-up leaves start-up's objects out of every scan)
    gc_log: list[tuple[int, float, int, float]] = []
    gc_t0 = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            gc_t0[0] = time.perf_counter()
        else:
            gc_log.append((info["generation"], round(1000 * (time.perf_counter() - gc_t0[0]), 2), info["collected"],
                           gc_t0[0]))

    gc.callbacks.append(on_gc)
    print(f"HTTP server up: gc frozen objects {gc.get_freeze_count()}, tracked {len(gc.get_objects())}, "
          f"thresholds {gc.get_threshold()}", flush=True)
    failed: set[tuple[str, str]] = set()
    audio = frames / 12.5
    try:
        for r in range(max(rounds.values())):
            order = variants if r % 2 == 0 else variants[::-1]
            fmts = formats if r % 2 == 0 else formats[::-1]
            for label, overrides in order:
                configure(overrides)
                for fmt in fmts:
                    if (label, fmt) in failed or fmt not in overrides.get("formats", [fmt]):
                        continue
                    try:
                        if r == 0:  # warm-up (encoder start-up, this variant's first prompt, a burst's shapes)
                            for c in concs:
                                clients(fmt, c, 1)
                        for c in concs:
                            if r >= rounds[c]:
                                continue
                            before = (eng.prefills, eng.decode_calls, eng.codec_captures)
                            prefill_log.clear()
                            jobs.clear()
                            gc_log.clear()
                            ttfb, walls, elapsed = clients(fmt, c, 1)
                            a = acc.setdefault((label, fmt, c), dict(ttfb=[], walls=[], elapsed=0.0, bursts=[],
                                                                     prefills=0, decodes=0, admitted=[]))
                            a["admitted"].append(list(prefill_log))
                            a["ttfb"] += ttfb
                            a["walls"] += walls
                            a["elapsed"] += elapsed
                            a["bursts"].append(round(1000 * statistics.median(ttfb), 1))
                            a.setdefault("burst_wall_s", []).append(round(elapsed, 3))
                            a["prefills"] += eng.prefills - before[0]
                            a["decodes"] += eng.decode_calls - before[1]
                            a["codec_captures"] = a.get("codec_captures", 0) + eng.codec_captures - before[2]
                            a.setdefault("timeline", []).append(timeline(jobs))
                            gcs = {g: [sum(x[0] == g for x in gc_log), max((x[1] for x in gc_log if x[0] == g),
                                                                           default=0.0)] for g in (0, 1, 2)}
                            a.setdefault("burst_gc", []).append(gcs)  # generation: [collections, longest ms]
                            # the collections in the burst's first 60 ms (from its first request's arrival):
                            # (ms after it, generation, pause ms), and their summed pause
                            t_first = min((j.marks.get("arrived", j.t0) for j in jobs), default=0.0)
                            early = [(round(1000 * (t - t_first), 1), g, ms) for g, ms, _, t in gc_log
                                     if 0 <= t - t_first < 0.06]
                            a.setdefault("burst_gc_first_60ms", []).append(early)
                            print(f"  round {r} {fmt}{label} x{c}: p50 {a['bursts'][-1]} ms, wall {elapsed:.3f} s, "
                                  f"gc (gen: n, max ms) {gcs}, in the first 60 ms {early} "
                                  f"({sum(x[2] for x in early):.2f} ms), prefills (n, ms) "
                                  f"{a['admitted'][-1]}, timeline {a['timeline'][-1]}", flush=True)
                    except Exception as e:  # noqa: BLE001 - e.g. a format whose encoder is missing on this machine
                        print(f"HTTP {fmt}{label} failed: {type(e).__name__}: {e}", flush=True)
                        failed.add((label, fmt))
    finally:
        gc.callbacks.remove(on_gc)
        gc.set_threshold(*gc_threshold)
        configure(variants[-1][1])
        del eng._prefill  # the engine's own method again
        synth.SpeechJob.__init__ = real_init
        live["server"].should_exit = True
        live["thread"].join(timeout=10)
    out = []
    for label, _ in variants:
        for fmt in formats:
            for c in concs:
                a = acc.get((label, fmt, c))
                if a is None:
                    continue
                n = len(a["bursts"])
                row = summarize(f"voicepipe HTTP {fmt}{label}", c, a["ttfb"], [w / audio for w in a["walls"]],
                                audio * len(a["walls"]), a["elapsed"])
                row |= dict(bursts=n, burst_p50_ms=a["bursts"], burst_wall_s=a["burst_wall_s"],
                            burst_gc=a["burst_gc"], burst_gc_first_60ms=a["burst_gc_first_60ms"],
                            burst_prefills=a["admitted"], timeline=a["timeline"],
                            prefills_per_round=a["prefills"] / n, decode_calls_per_round=a["decodes"] / n,
                            codec_captures=a.get("codec_captures", 0))
                out.append(row)
                print(row, flush=True)
    return out


TIMELINE = ("arrived", "t0", "prepare_start", "prepared", "submitted", "prefill_start", "embedded", "gpu_embedded",
            "admitted", "gpu_prefill_end",
            "admitted_seen", "step1_launched", "gpu_step1_end", "frame1", "step2_launched", "gpu_step2_end", "frame2",
            "stream_start", "encoder_ready", "first_enqueue", "first_decode_start", "first_decode_end", "first_chunk",
            "first_byte")


def timeline(jobs: list) -> dict:
    """A burst's server-side milestones (ms after its first request reached the app), median and max over its
    requests: the request's head parsed (the app's gate, `arrived`), route entry (t0), prompt prepared, submitted,
    admitted by the engine (and seen by the request), the response stream and its encoder started, the first
    window queued for and out of the codec, the first chunk received by the request and its first bytes yielded.
    Between admission and the first window: each of the request's first two frame steps launched (host), done on
    the GPU (`gpu_*`: CUDA timing events, counted from the prefill's start event, taken to run when it was recorded)
    and its frame read by the host (`frame1`, `frame2`)."""
    if not jobs:
        return {}
    start = min(j.marks.get("arrived", j.t0) for j in jobs)
    out = {}
    for k in TIMELINE:
        xs = []
        for j in jobs:
            m = {"t0": j.t0, **j.marks, **(j.current.marks if j.current is not None else {})}
            if k in m:
                xs.append(1000 * (m[k] - start))
        if xs:
            out[k] = (round(statistics.median(xs), 1), round(max(xs), 1))
    return out


HTTP_CLIENT = """
import asyncio, json, sys, time
import httpx

url, body, c, runs = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])


async def one(client):
    t0 = time.perf_counter()
    first = None
    async with client.stream("POST", url, json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code} {(await r.aread())[:200]!r}")
        async for chunk in r.aiter_bytes():
            if chunk and first is None:
                first = time.perf_counter() - t0
    return first, time.perf_counter() - t0


async def main():
    ttfb, wall, elapsed = [], [], 0.0
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=c + 4)) as client:
        # c voice assistants are running processes with a keep-alive connection each: their HTTP stacks are
        # imported and connected before they speak. Without this, each burst's first request also timed
        # httpx/anyio's lazy set-up in this fresh process, and with one warm connection the other c - 1 requests
        # reached the server a TCP handshake after the first.
        health = url.rsplit("/v1/", 1)[0] + "/health"
        for r in await asyncio.gather(*(client.get(health) for _ in range(c))):
            r.raise_for_status()
        for _ in range(runs):
            t0 = time.perf_counter()
            res = await asyncio.gather(*(one(client) for _ in range(c)))
            elapsed += time.perf_counter() - t0
            ttfb += [r[0] for r in res]
            wall += [r[1] for r in res]
    print(json.dumps({"ttfb": ttfb, "wall": wall, "elapsed": elapsed}))


asyncio.run(main())
"""

# `c` voice assistants as `c` processes (`client_procs`): each its own interpreter and keep-alive connection, all
# sending at one wall-clock instant; the one-process client above builds and sends its requests one after another
# (a 16-request burst reached the app over 13-24 ms on 2026-12-05), so its early requests also time its later ones
HTTP_CLIENT_PROCS = r"""
import json, subprocess, sys, time

url, body, c, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
CHILD = '''
import json, sys, time
import httpx

url, body = sys.argv[1], json.loads(sys.argv[2])
with httpx.Client(timeout=120) as client:
    client.get(url.rsplit("/v1/", 1)[0] + "/health").raise_for_status()
    print("ready", flush=True)
    for line in sys.stdin:
        start = float(line)
        time.sleep(max(0.0, start - time.time() - 0.002))
        while time.time() < start:
            pass
        t0, first = time.perf_counter(), None
        with client.stream("POST", url, json=body) as r:
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code} {r.read()[:200]!r}")
            for chunk in r.iter_bytes():
                if chunk and first is None:
                    first = time.perf_counter() - t0
        print(json.dumps([first, time.perf_counter() - t0]), flush=True)
'''
procs = [subprocess.Popen([sys.executable, "-c", CHILD, url, body], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) for _ in range(c)]
try:
    for p in procs:
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError("a client process did not start")
    ttfb, wall, elapsed = [], [], 0.0
    for _ in range(runs):
        start = time.time() + 0.05
        for p in procs:
            p.stdin.write(f"{start}\n")
            p.stdin.flush()
        res = [json.loads(p.stdout.readline()) for p in procs]
        elapsed += time.time() - start
        ttfb += [r[0] for r in res]
        wall += [r[1] for r in res]
finally:
    for p in procs:
        p.stdin.close()
    for p in procs:
        p.wait(timeout=30)
print(json.dumps({"ttfb": ttfb, "wall": wall, "elapsed": elapsed}))
"""


def bench_official(tts, frames: int, concs: list[int]) -> list[dict]:
    pad = tts.model.config.talker_config.codec_pad_id  # a suppressed id as EOS: generation runs to max_new_tokens
    kw = dict(speaker="alice", language="english", eos_token_id=pad)
    tts.generate_custom_voice(text=TEXT, max_new_tokens=4, **kw)  # warm-up
    out = []
    for c in concs:
        _sync()
        t0 = time.perf_counter()
        tts.generate_custom_voice(text=[TEXT] * c, max_new_tokens=frames + 1, **kw)  # N+1 tokens -> N frames
        _sync()
        wall = time.perf_counter() - t0
        audio = frames / 12.5
        out.append(summarize("official", c, [wall] * c, [wall / audio] * c, audio * c, wall))
        print(out[-1], flush=True)
    return out


def bench_faster(tts, frames: int, concs: list[int], repeats: dict[int, int], chunk: int) -> list[dict]:
    from faster_qwen3_tts import FasterQwen3TTS
    from faster_qwen3_tts.predictor_graph import PredictorGraph
    from faster_qwen3_tts.talker_graph import TalkerGraph

    talker = tts.model.talker
    tc = tts.model.config.talker_config
    pg = PredictorGraph(talker.code_predictor, talker.code_predictor.model.config, tc.hidden_size, device="cuda",
                        dtype=torch.bfloat16, do_sample=True, top_k=50, temperature=0.9)
    tg = TalkerGraph(talker.model, tc, device="cuda", dtype=torch.bfloat16, max_seq_len=512)
    fq = FasterQwen3TTS(tts, pg, tg, device="cuda", dtype=torch.bfloat16, max_seq_len=512)
    kw = dict(text=TEXT, speaker="alice", language="english", chunk_size=chunk)
    for _ in fq.generate_custom_voice_streaming(max_new_tokens=4, min_new_tokens=4, **kw):
        pass

    def one() -> tuple[float, float, float]:
        t0 = time.perf_counter()
        first, n = None, 0
        for audio, _sr, _timing in fq.generate_custom_voice_streaming(max_new_tokens=frames, min_new_tokens=frames,
                                                                       **kw):
            if first is None:
                first = time.perf_counter() - t0
            n += len(audio)
        return first, time.perf_counter() - t0, n / 24000

    out = []
    for c in concs:
        ttfa, rtf, audio, walls = [], [], 0.0, 0.0
        for _ in range(repeats.get(c, 1)):
            t0 = time.perf_counter()
            for _ in range(c):  # served one after the other; all arrived at t0
                start = time.perf_counter() - t0
                first, wall, secs = one()
                ttfa.append(start + first)
                rtf.append((start + wall) / secs)
                audio += secs
            walls += time.perf_counter() - t0
        out.append(summarize(f"faster-qwen3-tts chunk {chunk}", c, ttfa, rtf, audio, walls))
        print(out[-1], flush=True)
    return out


def table(rows: list[dict]) -> str:
    lines = ["| system | streams | n | TTFA p50 ms | TTFA p95 ms | RTF per stream | aggregate x real time |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['system']} | {r['concurrency']} | {r['n']} | {r['ttfa_p50_ms']:.0f} | "
                     f"{r['ttfa_p95_ms']:.0f} | {r['rtf_mean']:.3f} | {r['x_realtime']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny model (CPU smoke test of this script)")
    ap.add_argument("--frames", type=int, default=125, help="forced frames per request (125 = 10 s)")
    ap.add_argument("--concurrency", default="1,16,32,64")
    ap.add_argument("--faster-concurrency", default="1", help="faster-qwen3-tts serves streams one by one")
    ap.add_argument("--systems", default="numerics,baseline,voicepipe,http,faster")
    ap.add_argument("--chunk", default="2,8", help="faster-qwen3-tts chunk_size values (frames)")
    ap.add_argument("--http-formats", default="pcm,wav,mp3")
    ap.add_argument("--http-concurrency", default="1,16", help="client counts for the HTTP system")
    ap.add_argument("--http-variants", choices=["prefill-cudnn", "admit-wait", "host", "host-admit", "embed",
                                                    "prefill-graphs", "arm", "gc", "first-audio-2", "first-audio-3",
                                                    "first-audio-4", "http-stack", "clients"],
                    default="prefill-cudnn",
                    help="the two engine settings the HTTP system alternates")
    ap.add_argument("--http-texts", choices=["fixed", "varied"], default="varied",
                    help="fixed: every request sends the same text; varied: each burst its own length (varied_text)")
    ap.add_argument("--repeats", default="1:5,4:2,16:1",
                    help="runs per concurrency level (TTFA samples); for http, bursts per level, order alternating")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--tiny-dir", type=Path, default=None, help="prebuilt voicepipe.models.tiny custom-voice dir")
    ap.add_argument("--engine-set", default="", help="EngineConfig settings for every engine, e.g. "
                    "codec_cudnn_benchmark=false (values parsed as JSON)")
    ap.add_argument("--lever-numerics", type=lambda x: x.split(","), default=None, metavar="NAME,NAME",
                    help="with the numerics system: check only these levers' engines against fp32 (default: all)")
    ap.add_argument("--lever", action="append", default=[], metavar="NAME:KEY=VALUE[;KEY=VALUE]",
                    help="another engine with these EngineConfig settings (values as JSON), measured after the "
                    "named systems' in the same process (system voicepipe-NAME); repeatable")
    a = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    concs = [int(x) for x in a.concurrency.split(",")]
    repeats = {int(k): int(v) for k, v in (x.split(":") for x in a.repeats.split(","))}
    systems = a.systems.split(",")
    for kv in filter(None, a.engine_set.split(",")):
        k, v = kv.split("=", 1)
        ENGINE_SET[k] = json.loads(v)
    with tempfile.TemporaryDirectory() as tmp:
        tts = build_model(device, dtype, a.tiny, Path(tmp), a.tiny_dir)
    info = dict(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), torch=torch.__version__,
                gpu=torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
                gpu_uuid=str(getattr(torch.cuda.get_device_properties(0), "uuid", "")) if device == "cuda" else None,
                frames=a.frames, text=TEXT, engine_set=ENGINE_SET)
    print(info, flush=True)
    rows: list[dict] = []
    extra: dict = {"profile": {}}

    def save() -> None:
        if a.out:
            a.out.mkdir(parents=True, exist_ok=True)
            (a.out / "serve_bench.json").write_text(json.dumps(dict(info=info, rows=rows, **extra), indent=2))
            (a.out / "serve_bench.md").write_text(table(rows) + "\n")

    mb = max(concs)
    t_start = time.perf_counter()
    eng = make_engine(tts, mb) if "voicepipe" in systems else None
    if "numerics" in systems and device == "cuda":
        try:  # on the engine that is measured next (its units compile here, on first use)
            extra["numerics"] = numerics(tts, eng)
        except Exception as e:  # noqa: BLE001 - report and go on
            print(f"numerics failed: {type(e).__name__}: {e}", flush=True)
        print(f"[{time.perf_counter() - t_start:.0f} s] numerics done", flush=True)
    if "baseline" in systems:  # the engine as it was: eager step units and codec, CUDA graphs of the step
        base = make_engine(tts, mb, compile=False, codec_graphs=False)
        base.capture(lengths=[256])
        rows += bench_voicepipe(tts, a.frames, [c for c in concs if c <= 16], repeats, mb, name="baseline", eng=base,
                                profile=extra["profile"])
        del base
        torch.cuda.empty_cache()
        save()
        print(f"[{time.perf_counter() - t_start:.0f} s] baseline done", flush=True)
    if eng is not None:
        rows += bench_voicepipe(tts, a.frames, concs, repeats, mb, eng=eng, profile=extra["profile"])
        save()
        print(f"[{time.perf_counter() - t_start:.0f} s] voicepipe done", flush=True)
    def lever_off(system: str, **cfg) -> None:
        """A second engine with one setting changed, measured right after the default one (same call). A key
        MODULE.NAME (e.g. fused.ATTN_WARPS) sets that constant of `voicepipe.serve.engine.MODULE` while this
        engine is built, captured and measured (read at launch, so its graphs hold it), then restores it; the key
        blas sets torch's preferred BLAS library (cublas, cublaslt) the same way."""
        import importlib

        blas = cfg.pop("blas", None)  # torch.backends.cuda.preferred_blas_library for this engine (e.g. cublaslt)
        old_blas = torch.backends.cuda.preferred_blas_library() if blas else None
        if blas:
            torch.backends.cuda.preferred_blas_library(blas)
        consts = {k: v for k, v in cfg.items() if "." in k}
        cfg = {k: v for k, v in cfg.items() if "." not in k}
        saved = {}
        for k, v in consts.items():
            mod = importlib.import_module(f"voicepipe.serve.engine.{k.split('.')[0]}")
            saved[k] = (mod, getattr(mod, k.split(".")[1]))
            setattr(mod, k.split(".")[1], v)
        try:
            _lever(system, cfg)
        finally:
            for k, (mod, v) in saved.items():
                setattr(mod, k.split(".")[1], v)
            if blas:
                torch.backends.cuda.preferred_blas_library(old_blas)

    def _lever(system: str, cfg: dict) -> None:
        other = make_engine(tts, mb, **cfg)
        if "numerics" in systems and device == "cuda" and (a.lever_numerics is None or system in a.lever_numerics):
            try:
                extra[f"numerics-{system}"] = numerics(tts, other)
            except Exception as e:  # noqa: BLE001 - report and go on
                print(f"numerics ({system}) failed: {type(e).__name__}: {e}", flush=True)
        rows.extend(bench_voicepipe(tts, a.frames, concs, repeats, mb, name=f"voicepipe-{system}", eng=other,
                                    profile=extra["profile"]))
        other.stop()
        del other
        if eng is not None:  # the codec decoder is the shared model's: give it back the measured engine's setting
            eng._fuse_codec()
        torch.cuda.empty_cache()
        save()
        print(f"[{time.perf_counter() - t_start:.0f} s] {system} done", flush=True)

    if "gemv-off" in systems and device == "cuda":  # the same engine with cuBLAS for every matmul (lever off)
        lever_off("gemv-off", small_gemv=False)
    if "fused-off" in systems and device == "cuda":  # the predictor's layers unfused at 1-2 rows (lever off)
        lever_off("fused-off", fused_predictor=False)
    if "fused2" in systems and device == "cuda":  # the fused layer at 1-2 rows only (lever off above 2 rows)
        lever_off("fused2", fused_rows=2)
    if "sample-off" in systems and device == "cuda":  # the step's codes sampled unfused (lever off)
        lever_off("sample-off", fused_sample=False)
    if "host-sync" in systems and eng is not None:  # the next step launched only after the host read this one's
        lever_off("host-sync", overlap_host=False)
    if "codec-unfused" in systems and device == "cuda":  # the codec's activations as the package's modules
        lever_off("codec-unfused", codec_fused=False)
    if "chunk12" in systems and eng is not None:  # steady-state codec windows of 12 frames (the lever off)
        lever_off("chunk12", chunk_frames=12)
    for spec in a.lever:  # --lever NAME:key=value;key=value
        name, _, kvs = spec.partition(":")
        lever_off(name, **{k: json.loads(v) for k, v in (kv.split("=", 1) for kv in filter(None, kvs.split(";")))})
    if "inline" in systems:
        rows += bench_voicepipe(tts, a.frames, concs, repeats, mb, name="voicepipe-inline-decode", decode_thread=False)
    if "http" in systems and eng is not None:
        eng.start()
        from voicepipe.serve.engine import EngineConfig

        if a.http_variants == "admit-wait":
            # waiting for announced requests (EngineConfig.admit_wait_ms: a burst admitted in one prefill) off and
            # on (the default), alternating, same server and run (the prompt side stream stays at its default)
            variants = [(" (admit wait off)", {"admit_wait_ms": 0.0}),
                        ("", {"admit_wait_ms": EngineConfig.admit_wait_ms})]
        elif a.http_variants == "prefill-graphs":
            # issue 17, TTFA at 16 clients: the prefill as a CUDA graph of its (batch, length) bucket or eager, with
            # prompts embedded at prepare or at admission after a quiet gap since the last announced request
            # (admit_gap_ms), and the first chunk of 2 frames (the default until 2026-12-04 17:xx) for reference.
            # Every variant names every setting (engine settings not named would stay as the variant before left
            # them); clients send new texts of TEXT's length (short_text), so prompts do not grow over the run
            base = {"first_chunk_frames": 1, "embed_at_admit": False, "admit_gap_ms": 0.0, "prefill_graphs": False,
                    "admit_wait_ms": EngineConfig.admit_wait_ms, "short_texts": True}
            gap = {"embed_at_admit": True, "admit_gap_ms": 2.5}
            variants = [(" (first chunk 2, eager prefill)", {"first_chunk_frames": 2}),
                        (" (eager prefill, embed at admit, gap 2.5 ms)", gap),
                        (" (prefill graphs)", {"prefill_graphs": True}),
                        (" (prefill graphs, embed at admit, gap 2.5 ms)", {"prefill_graphs": True, **gap})]
            variants = [(lb, {**base, **ov}) for lb, ov in variants]
        elif a.http_variants == "arm":
            # the defaults (first chunk 1, prefill graphs, embedding at admission after a 2.5 ms quiet gap, the
            # admitted slots' state in batched writes), the same with the slots' state written one slot at a time
            # (as before 2026-12-04 17:4x), and with prompts embedded at prepare (no gap)
            base = {"first_chunk_frames": 1, "prefill_graphs": True, "embed_at_admit": True, "admit_gap_ms": 2.5,
                    "admit_wait_ms": EngineConfig.admit_wait_ms, "short_texts": True, "per_slot_arm": False}
            variants = [("", {}), (" (per-slot arm)", {"per_slot_arm": True}),
                        (" (embed at prepare, no gap)", {"embed_at_admit": False, "admit_gap_ms": 0.0})]
            variants = [(lb, {**base, **ov}) for lb, ov in variants]
        elif a.http_variants == "gc":
            # the defaults (Python's own 700 for the youngest generation; the server raised it to 50,000 from
            # 18:26 to 19:30 on 2026-12-04, now `ServeConfig.gc_gen0_threshold`, off), and 50,000;
            # `--http-variants gap-embed` at commit 469ab7d also had the prompts embedded during the quiet gap
            base = {"first_chunk_frames": 1, "prefill_graphs": True, "embed_at_admit": True, "admit_gap_ms": 2.5,
                    "admit_wait_ms": EngineConfig.admit_wait_ms, "short_texts": True}
            variants = [("", {}), (" (gc gen0 50000)", {"gc_gen0": 50_000})]
            variants = [(lb, {**base, **ov}) for lb, ov in variants]
        elif a.http_variants == "first-audio-2":
            # issue 17, 2026-12-04 20:xx: the defaults (MP3 from LAME in-process, a burst's first windows decoded on
            # the engine's stream before its second step), the first windows decoded beside the second step, the
            # prefill's layers compiled (its graphs for that setting captured here), and MP3 through ffmpeg (mp3 only)
            base = {"first_chunk_frames": 1, "prefill_graphs": True, "embed_at_admit": True, "admit_gap_ms": 2.5,
                    "admit_wait_ms": EngineConfig.admit_wait_ms, "short_texts": True, "first_decode_alone": True,
                    "prefill_compile": False}
            variants = [("", {}), (" (first decode beside step 2)", {"first_decode_alone": False}),
                        (" (prefill compiled)", {"prefill_compile": True}),
                        (" (mp3 via ffmpeg)", {"mp3_encoder": "ffmpeg", "formats": ["mp3"]})]
            variants = [(lb, {**base, **ov}) for lb, ov in variants]
            eng.cfg.prefill_compile = True
            try:
                print(f"prefill graphs with compiled layers captured in {eng.capture_prefill():.1f} s", flush=True)
            except Exception as e:  # noqa: BLE001 - that variant then runs its prefills eagerly
                print(f"compiled prefill capture failed: {type(e).__name__}: {e}", flush=True)
            eng.cfg.prefill_compile = False
        elif a.http_variants == "first-audio-3":
            # issue 17, 2026-12-04 21:xx: the defaults (prefill layers compiled, length buckets of 8 tokens, first
            # windows decoded before the second step, MP3 from LAME), length buckets of 32 (as before), the prefill's
            # eager layers (their graphs captured here), and MP3 through ffmpeg (mp3 only)
            base = {"first_chunk_frames": 1, "prefill_graphs": True, "embed_at_admit": True, "admit_gap_ms": 2.5,
                    "admit_wait_ms": EngineConfig.admit_wait_ms, "short_texts": True, "first_decode_alone": True,
                    "prefill_compile": None, "prefill_len_step": 8}
            variants = [("", {}), (" (length buckets of 32)", {"prefill_len_step": 32}),
                        (" (prefill eager layers)", {"prefill_compile": False}),
                        (" (mp3 via ffmpeg)", {"mp3_encoder": "ffmpeg", "formats": ["mp3"]})]
            variants = [(lb, {**base, **ov}) for lb, ov in variants]
            eng.cfg.prefill_compile = False
            print(f"prefill graphs with eager layers captured in {eng.capture_prefill():.1f} s", flush=True)
            eng.cfg.prefill_compile = None
        elif a.http_variants == "first-audio-4":
            # the defaults of 2026-12-04 20:50 UTC again (another machine), beside the collector's youngest generation
            # collected after 50,000 net allocations (`ServeConfig.gc_gen0_threshold`, opt-in)
            base = {"first_chunk_frames": 1, "prefill_graphs": True, "embed_at_admit": True, "admit_gap_ms": 2.5,
                    "admit_wait_ms": EngineConfig.admit_wait_ms, "short_texts": True}
            variants = [("", {}), (" (gc gen0 50000)", {"gc_gen0": 50_000})]
            variants = [(lb, {**base, **ov}) for lb, ov in variants]
        elif a.http_variants == "http-stack":
            # issue 17, 2026-12-05: `voicepipe serve`'s HTTP stack, httptools + uvloop (the new default where they are
            # installed) against h11 + asyncio (uvicorn's pure-Python parser and the stdlib loop: every earlier row),
            # and the collector threshold beside them; the server restarts between variants, the engine stays
            base = {"first_chunk_frames": 1, "prefill_graphs": True, "embed_at_admit": True, "admit_gap_ms": 2.5,
                    "admit_wait_ms": EngineConfig.admit_wait_ms, "short_texts": True}
            variants = [("", {"http": "httptools", "loop": "uvloop"}),
                        (" (h11, asyncio)", {"http": "h11", "loop": "asyncio"}),
                        (" (httptools, uvloop, gc gen0 50000)", {"http": "httptools", "loop": "uvloop",
                                                                 "gc_gen0": 50_000})]
            variants = [(lb, {**base, **ov}) for lb, ov in variants]
        elif a.http_variants == "clients":
            # the clients, not the server: the same server and defaults, requests from one client process (every
            # earlier row) and from one process per request, all sending at one instant (HTTP_CLIENT_PROCS)
            base = {"first_chunk_frames": 1, "prefill_graphs": True, "embed_at_admit": True, "admit_gap_ms": 2.5,
                    "admit_wait_ms": EngineConfig.admit_wait_ms, "short_texts": True}
            variants = [("", {}), (" (a process per client)", {"client_procs": True})]
            variants = [(lb, {**base, **ov}) for lb, ov in variants]
        elif a.http_variants == "embed":
            # prompts embedded on each request's thread or by the engine at admission, batched
            # (EngineConfig.embed_at_admit); and the GIL handed over every 0.1 ms instead of 0.5 (sys.setswitchinterval)
            variants = [(" (embed at prepare)", {"embed_at_admit": False}), (" (switch 0.1 ms)", {"switch_ms": 0.1}),
                        (" (embed at admit)", {"embed_at_admit": True})]
            variants = [(lb, {"embed_at_admit": ov.get("embed_at_admit", True), **ov}) for lb, ov in variants]
        elif a.http_variants in ("host", "host-admit"):
            # the request path before and after the 19:xx changes (legacy_host in bench_http, and prompts prepared
            # one thread per request); host adds the current path with texts of TEXT's length (short_text);
            # host-admit, the current path with the admission wait off (every queued request admitted at once)
            variants = [(" (host before)", {"legacy_host": True, "prepare_threads": 0}), ("", {})]
            if a.http_variants == "host-admit":
                variants.insert(1, (" (admit wait off)", {"admit_wait_ms": 0.0}))
            else:  # the current path, clients sending new texts of TEXT's length (not growing burst by burst)
                variants.append((" (short texts)", {"short_texts": True}))
            variants = [(lb, {"admit_wait_ms": EngineConfig.admit_wait_ms, **ov}) for lb, ov in variants]
        else:  # the prefill's attention with cuDNN allowed (its plan per new shape) and excluded (the default)
            variants = [(" (prefill cuDNN)", {"prefill_cudnn": True}),
                        ("", {"prefill_cudnn": EngineConfig.prefill_cudnn})]
        try:
            rows += bench_http(eng, a.frames, a.http_formats.split(","),
                               [int(x) for x in a.http_concurrency.split(",")], repeats, variants,
                               varied=a.http_texts == "varied")
        except Exception as e:  # noqa: BLE001 - e.g. the server's packages missing on this machine
            print(f"HTTP bench failed: {type(e).__name__}: {e}", flush=True)
        eng.stop()
        save()
        print(f"[{time.perf_counter() - t_start:.0f} s] http done", flush=True)
    if "faster" in systems and device == "cuda":
        fconcs = [int(x) for x in a.faster_concurrency.split(",")]
        for chunk in (int(x) for x in a.chunk.split(",")):
            try:
                rows += bench_faster(tts, a.frames, fconcs, {1: 3}, chunk)
            except Exception as e:  # noqa: BLE001 - report and keep the other systems' numbers
                print(f"faster-qwen3-tts failed: {type(e).__name__}: {e}", flush=True)
            save()
    if "autotune" in systems and device == "cuda":  # last: its compile is the longest (Triton GEMV templates)
        del eng
        torch.cuda.empty_cache()
        opts = {"max_autotune": True, "coordinate_descent_tuning": True}
        try:
            t0 = time.perf_counter()
            rows += bench_voicepipe(tts, a.frames, concs, repeats, mb, name="voicepipe-autotune",
                                    profile=extra["profile"], compile_options=opts)
            print(f"[{time.perf_counter() - t_start:.0f} s] autotune done ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
        except Exception as e:  # noqa: BLE001 - report and keep the other rows
            print(f"autotune failed: {type(e).__name__}: {e}", flush=True)
        save()
    if "official" in systems:
        rows += bench_official(tts, a.frames, concs)
    print(table(rows))
    save()


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
