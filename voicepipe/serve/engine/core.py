"""Latency-first, batching generation engine for Qwen3-TTS 12 Hz models.

Why hand-written (and not `model.generate`): the package's generate runs transformers' generic loop with a dynamic
cache, a Python-level 15-step `generate` of the code predictor inside every talker step and no way to add a request
to a batch in flight. Here one *frame step* is a single function over fixed-size tensors:

    talker decoder step (static KV cache, per-slot positions)  ->  code-0 sampling (repetition penalty,
    suppressed control codes, min-new-tokens)  ->  the code predictor's 15 steps (own static cache)  ->
    the next talker input (sum of the 16 code embeddings + the next text embedding)

It runs for every active *slot* at once (step-synchronous continuous batching: a request joins at the next step
after a short eager prefill and leaves when it emits EOS), and on CUDA each (batch bucket, cache-length bucket) is
captured once as a CUDA graph, so a frame costs one graph replay and one small device->host copy. The model's own
modules (projections, RMSNorms, MLPs, embeddings, heads) are reused; only attention, the KV cache and RoPE indexing
are written here. The same code runs eagerly on CPU (tests) and matches the package's greedy output code for code.

Audio leaves as soon as it is decoded: the 12 Hz codec decodes every few frames with left context (like the
package's `chunked_decode`, in small chunks), first chunk smaller for a short time-to-first-audio.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from voicepipe.serve.engine.codec import SAMPLE_RATE, SAMPLES_PER_FRAME, CodecStreaming, wait_event
from voicepipe.serve.engine.kernels import FusedLayerError, _fuse_layer, signed_sin
from voicepipe.serve.engine.step import FrameStep

log = logging.getLogger(__name__)



@dataclass
class GenerationConfig:
    """Sampling settings. Defaults = the package's hard defaults; a checkpoint's `generation_config.json` overrides
    them (`from_model`), and a request may override those (`with_overrides`)."""

    do_sample: bool = True
    temperature: float = 0.9
    repetition_penalty: float = 1.05
    subtalker_do_sample: bool = True
    subtalker_temperature: float = 0.9
    max_new_tokens: int = 2048
    min_new_tokens: int = 2

    # generation_config.json spells some fields the package's way
    _FILE_NAMES: ClassVar[dict[str, str]] = {"subtalker_dosample": "subtalker_do_sample"}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> GenerationConfig:
        """From the package's generation config dict (`generation_config.json`); unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        kw = {}
        for k, v in (data or {}).items():
            k = cls._FILE_NAMES.get(k, k)
            if k in names and v is not None:
                kw[k] = v
        return cls(**kw)

    @staticmethod
    def file_of(tts: Any, model_dir: str | Path | None = None) -> dict[str, Any]:
        """The checkpoint's `generation_config.json` as a dict: read from `model_dir` when given, else what the
        package loaded from that file (`model.generate_config`); {} when there is none."""
        data = None
        if model_dir is not None and (Path(model_dir) / "generation_config.json").is_file():
            data = json.loads((Path(model_dir) / "generation_config.json").read_text())
        if data is None:
            data = getattr(getattr(tts, "model", tts), "generate_config", None)
        return data if isinstance(data, dict) else {}

    @classmethod
    def from_model(cls, tts: Any, model_dir: str | Path | None = None) -> GenerationConfig:
        """The checkpoint's sampling (`file_of`)."""
        return cls.from_dict(cls.file_of(tts, model_dir))

    def with_overrides(self, **overrides: Any) -> GenerationConfig:
        """A copy with the given fields replaced (None values and the package's spellings are accepted)."""
        kw = {self._FILE_NAMES.get(k, k): v for k, v in overrides.items() if v is not None}
        unknown = sorted(set(kw) - {f.name for f in fields(self)})
        if unknown:
            raise EngineError(f"generation settings {unknown}: unknown (known: {[f.name for f in fields(self)]})")
        return replace(self, **kw)


@dataclass
class EngineConfig:
    """Engine sizing. `top_k`s are per engine (they shape the graphs); temperatures are per request."""

    max_batch: int = 8
    max_len: int = 2048
    max_text: int = 512
    len_bucket: int = 256
    top_k: int | None = None  # None: the checkpoint's generation_config.json (else 50)
    subtalker_top_k: int | None = None
    # a stream's first chunk: 1 frame, decoded after one frame step instead of two (the same samples: the codec is
    # causal and the next window decodes it again as left context; H200: in-process TTFA 33 -> 28 ms at 1 stream,
    # 41 -> 34 ms at 16, the same throughput: benchmarks/RESULTS.md, 2026-12-04 17:10 UTC)
    first_chunk_frames: int = 1
    # a stream's chunks once under way: each codec window decodes this many new frames with `left_context_frames`
    # before them (24: 2.0 frames decoded per frame of audio, 12: 3.1; H200, 16 / 32 streams: 120 / 179x against
    # 111 / 157x real time). 31: 31 + 25 = 56 frames, exactly the codec graph's frame bucket (`codec_frame_bucket`),
    # which 24 + 25 = 49 was padded to: 1.8 instead of 2.3 frames decoded per frame of audio, the same graphs
    # (benchmarks/RESULTS.md, 2026-12-04)
    chunk_frames: int = 31
    left_context_frames: int = 25
    cuda_graphs: bool | None = None  # None: on when the device is CUDA
    compile: bool | str | None = None  # torch.compile the step units (a str: the backend); None: with cuda_graphs
    compile_options: dict | None = None  # extra inductor options, e.g. {"max_autotune": True}
    # the code predictor's small matmuls (<= 3 M weights) through a Triton GEMV at 1-2 rows (`engine.gemv`);
    # None: with compiled units on CUDA
    small_gemv: bool | None = None
    # a step of up to `fused_rows` rows runs the code predictor's layers as five fused Triton kernels each
    # (`engine.fused`) instead of ~11 compiled ones; None: with compiled units on CUDA
    fused_predictor: bool | None = None
    # compiled units: a step of one row gets its own batch bucket (the units traced again with the batch specialised
    # to 1) instead of running in the 2-row one. H100, 2026-12-06 05:16, one process: the 1-row step graph 4.23 ms
    # against 4.35 for the 2-row one, one stream RTF 0.0560 -> 0.0544, 16 streams unchanged (213x), graph capture
    # ~18 s longer (benchmarks/RESULTS.md). False: one stream runs in the 2-row graph
    one_row_bucket: bool = True
    # the largest step (rows) that takes the fused layer; above 2 rows its ops use their tl.dot form (at most 16;
    # H200: a 16-row predictor step 336 -> 232 us, 16 streams 156 -> 191x real time: benchmarks/RESULTS.md)
    fused_rows: int = 16
    # the fused predictor step's final norm + code head as one kernel, its sampling + the code's embedding as
    # another (`fused.sample_embed`; the same draws, the same codes); None: with `fused_predictor` and `fused_sample`
    # (H200: 42 fewer kernels a frame step, the step 0.6-0.8 % shorter: benchmarks/RESULTS.md)
    fused_head: bool | None = None
    # above 2 rows, the fused layer's two matmul + residual ops (1024 output columns: 32 programs at BN 32) split K
    # over this many programs per output tile, the partials added in a fixed order (deterministic); 1: no split
    # (H200, 16 rows: the down projection 8.8 -> 6.0 us, the output projection 6.6 -> 5.1 us, the predictor step
    # 216 -> 195 us: benchmarks/RESULTS.md)
    fused_split_k: int = 4
    # a step of 1-2 rows (one stream) runs each code-predictor step as one persistent Triton kernel
    # (`engine.persistent`: its 5 layers, head and sampler, grid-wide barriers between phases) instead of 30 fused
    # ones; needs the fused predictor and fused sampling (the same draws; results agree to summation order). Off:
    # H200, the predictor step 170 -> 162 us as a graph of 14, but the engine's 2-row frame step 4.70 ms either way
    # and one stream's RTF 0.062-0.063 both ways (benchmarks/RESULTS.md, 2026-12-04 14:45 UTC)
    persistent_predictor: bool = False
    # the talker's attention as one Triton kernel per layer (`fused.attn_decode_rows`: q/k head norms, RoPE, the
    # cache write and the attention over the length bucket) instead of the compiled norms + RoPE, two cache writes
    # and SDPA. None: with compiled units on CUDA with Triton. H100, same run, two engines each way: the 2-row frame
    # step 4.97 -> 4.80 ms (948 -> 808 kernels), 16 rows 5.39 -> 5.07 ms; one stream's RTF 0.064 -> 0.063, 16
    # streams 192-193 -> 199-200x real time; bf16 vs fp32 as the default's (benchmarks/RESULTS.md, 2026-12-05)
    fused_talker_attn: bool | None = None
    # a one-row step (one stream, `one_row_bucket`) runs the talker's matmuls as the fused ops of the code predictor
    # (`fused.rms_linear` for norm + q/k/v, `fused.linear_residual` for the output and down projections + residual,
    # `fused.rms_glu` for norm + gate/up + SiLU) instead of cuBLAS and the compiled norms; needs `fused_talker_attn`.
    # H100, 2026-12-06, one call per matrix at one row: q/k/v 9.6 us with its norm against cuBLAS's 8.2 without it,
    # gate/up 19.9 against 20.9, down 10.8 against 12.5, output 4.5 against 6.0 (`benchmarks/fused.py --sweep
    # --sweep-only talker`). Steps of more rows keep cuBLAS (at 16 rows the fused forms were slower: 2026-12-04).
    # Same H100, one process: the 1-row step graph 4.17 -> 4.03 ms (802 -> 662 kernels), one stream RTF 0.0541 ->
    # 0.0523. bf16 against fp32: 1.8 % relative error in the talker's output, as the eager (uncompiled) bf16 path's
    # 1.8-1.9 %, against 1.5 % for the compiled units, whose fused kernels skip some of eager's bf16 roundings; the
    # fused ops round where eager (and the package's `generate`) do (benchmarks/RESULTS.md, 2026-12-06 05:46)
    fused_talker_mm: bool = True
    # a one-row step (one stream) samples the predictor's codes with each code embedding table extended by its rows'
    # input projection (`kernels.projected_tables`: 189 MB for the 1.7B model, built at start-up), so its 14
    # projection kernels a frame become row copies inside the sampling kernel; the same rows bit for bit, the same
    # codes. None: with the fused predictor (CUDA). H100, 2026-12-06, two engines each way: the 1-row step graph
    # 3.98 -> 3.88 ms (669 -> 655 kernels), one stream RTF 0.0517 -> 0.0504, sampled codes for a seed equal, 16
    # streams unchanged (214x) (benchmarks/RESULTS.md, serve)
    proj_table: bool | None = None
    # the frame step makes its 16 sampling calls' exponential draws before its layers, in the same order (the same
    # numbers, the same codes), on CUDA on a stream of their own beside the talker's layers, instead of one draw
    # kernel before each sampling kernel on the step's critical path. None: on CUDA. H100, 2026-12-06, two engines
    # each way: the 1-row step graph 3.87 -> 3.81 ms, one stream RTF 0.0503 -> 0.0494, 16 streams 214.6-215.1x ->
    # 218.2-218.5x, sampled codes for a seed equal (benchmarks/RESULTS.md, serve)
    early_draws: bool | None = None
    # the step's 16 codes sampled by one Triton kernel each (threshold top-k, the same exponential draws, so the
    # same codes for a seed); None: with compiled units on CUDA
    fused_sample: bool | None = None
    # the prefill's attention may use cuDNN (False: flash/efficient only; cuDNN plans every new (batch, length))
    prefill_cudnn: bool = False
    # a prefill of at most `prefill_graph_tokens` (padded) tokens is padded to its (batch, length) bucket and replays
    # a CUDA graph captured at start-up, instead of launching ~550 kernels (eager, one prompt's prefill is bound by
    # launching them). None: with cuda_graphs; read at each prefill. H200, prompts of 93 tokens: 1 prompt 12.6 ->
    # 3.2 ms, 16 prompts 14.2 -> 13.3 ms (GPU-bound); in-process TTFA 28 -> 13 ms at 1 stream, 32 -> 28 ms at 16; the
    # same K/V bitwise and the same greedy codes (benchmarks/RESULTS.md, 2026-12-04 17:24 UTC)
    prefill_graphs: bool | None = None
    prefill_graph_tokens: int = 8192
    # the prefill graphs' prompt lengths: multiples of this up to 256 tokens (then of 64 and 128). With 32, a burst of
    # 100-101-token prompts was padded to 128 (22 % of its prefill's work); with 8 to 104 (3.5 %). H200, 16 such
    # prompts, compiled layers: 10.8 -> 9.6 ms on the GPU (benchmarks/RESULTS.md, 2026-12-04 20:21-20:43 UTC). 3x
    # the graphs (180 at max_batch 16, max_len 512), captured at start-up in a few ms each, in one memory pool
    prefill_len_step: int = 8
    # the prefill layer's elementwise work (norms, RoPE, SiLU, residual adds) fused by torch.compile around its
    # matmuls, graphed like the eager layers. None: with compiled frame-step units. H200, 16 prompts of 100-101
    # tokens: 13.4 -> 9.6 ms on the GPU (601 -> 405 kernels); TTFA p50 at 16 HTTP clients 57.0 -> 52.0 and 52.7 ->
    # 48.1 ms (pcm, two calls). Compiled code rounds otherwise than the eager ops: their K/V differ by 1.9 % (relative,
    # bf16; the bf16 engine's talker output is 1.5 % off fp32 on these random weights) (benchmarks/RESULTS.md,
    # 2026-12-04 20:21-20:43 UTC)
    prefill_compile: bool | None = None
    codec_graphs: bool | None = None  # codec decode as CUDA graphs of padded shapes; None: with cuda_graphs
    # the codec decoder's SnakeBeta activations as one Triton kernel each, with the causal convolutions' left
    # padding written by it (`engine.snake`); None: on CUDA with Triton
    codec_fused: bool | None = None
    # cuDNN times its convolution algorithms for each codec graph's shapes before the capture (what the graph then
    # replays; the heuristic choice runs some of the decoder's convolutions on a legacy non-tensor-core kernel);
    # costs start-up seconds, not serving time. None: on CUDA (only captures are affected)
    codec_cudnn_benchmark: bool | None = None
    non_streaming_text: bool = True  # the package's default prompt layout for custom voices
    decode_thread: bool = True  # codec decode on its own thread/stream (False: inline, between frame steps)
    # a burst's first windows (decode thread idle) decoded from the engine thread, on CUDA on its stream before the
    # second frame step is launched, so that the decode has the GPU to itself instead of sharing it with that step.
    # H200, 16 HTTP clients: first window decoded 6.4 -> 4.4 ms after it was queued, TTFA p50 58.7 -> 57.0 ms (pcm);
    # the second frame ~3 ms later (benchmarks/RESULTS.md, 2026-12-04 20:21 UTC)
    first_decode_alone: bool = True
    # launch frame step n+1 before reading step n's codes (the host's per-step work then overlaps the GPU's);
    # False: read each step's codes before the next is launched
    overlap_host: bool = True
    prepare_stream: bool = True  # CUDA: prompts embedded on a side stream, not queued behind running frame steps
    # an idle engine given a request waits (up to this long) for the requests announced with `expect()` that are
    # still being prepared, so a burst of clients is admitted in one prefill, not one per step; 0: never waits
    admit_wait_ms: float = 50.0
    # True: a server's prompts (`prepare(embed=False)`) are embedded by the engine thread when admitted, all of a
    # prefill's in one batched call, instead of ~25 small device ops on each request's thread (each releases and
    # re-takes the GIL the event loop holds). Alone it split bursts into two prefills (the first requests reached
    # the idle engine before the rest had arrived; 2026-12-03 19:31 UTC); with `admit_gap_ms` 2.5 every burst of
    # 16 clients was one prefill, started 0.9-6.3 ms after the last arrival instead of 14-28 ms (H200, TTFA p50 at
    # 16 clients 80 -> 66, 66 -> 59 and 66 -> 53 ms in three calls, +1-5 ms at one client: benchmarks/RESULTS.md,
    # 2026-12-04 17:10-17:40 UTC)
    embed_at_admit: bool = True
    # an idle engine given a request also waits until no request has been announced (`expect`) for this long, so a
    # burst still arriving (whose earlier prompts are already prepared, e.g. with `embed_at_admit`) is admitted in
    # one prefill; bounded by `admit_wait_ms`. A request queued when none was announced within the gap (in-process
    # `submit`) does not wait. 0: off
    admit_gap_ms: float = 2.5


@dataclass
class Prompt:
    """A prepared request: talker prefill embeddings [T, H] and trailing text embeddings [N, H]; `layout` is the
    ids/masks they were built from (`voicepipe.models.prompt`). `embeds`/`trailing` None: not embedded yet
    (`prepare(embed=False)`); the engine embeds it when it admits it."""

    embeds: torch.Tensor | None
    trailing: torch.Tensor | None
    layout: Any = None


@dataclass
class Event:
    """What the engine reports to a request: kind is 'audio', 'done' or 'error'."""

    kind: str
    audio: np.ndarray | None = None
    message: str = ""
    stats: dict[str, Any] = field(default_factory=dict)


class EngineError(RuntimeError):
    """A request the engine cannot run (too long, engine stopped)."""


class RequestHandle:
    """A submitted request; `cancel()` frees its slot at the next step."""

    _ids = itertools.count()

    def __init__(self, prompt: Prompt, gen: GenerationConfig, on_event: Callable[[Event], None]):
        self.id = next(self._ids)
        self.prompt = prompt
        self.gen = gen
        self.on_event = on_event
        self.cancelled = False
        self.slot: int | None = None
        self.frames: list[torch.Tensor] = []
        self.emitted = 0
        self.submitted = time.perf_counter()
        self.admitted_at: float | None = None
        self.first_audio_at: float | None = None
        self.admitted = threading.Event()
        self.finished = threading.Event()
        self.marks: dict[str, float] = {}  # perf_counter timestamps of milestones (diagnostics)
        # CUDA: timing events of its prefill and first frame steps (diagnostics), turned into `marks` when it ends
        self.gpu_marks: list[tuple[str, torch.cuda.Event]] = []
        self.launched = 0  # frame steps launched for it
        self.on_admitted: Callable[[], None] | None = None  # called on the engine thread once it holds a slot

    def cancel(self) -> None:
        """Ask the engine to drop this request (client gone, timeout)."""
        self.cancelled = True



class TTSEngine(FrameStep, CodecStreaming):
    """Batched streaming generation over one loaded `qwen_tts.Qwen3TTSModel` (one voice)."""

    def __init__(self, tts: Any, config: EngineConfig | None = None, *, model_dir: str | Path | None = None,
                 language: str | None = None):  # fmt: skip
        """`model_dir`: the checkpoint dir (default: where `tts` was loaded from); its `generation_config.json` gives
        the default sampling (`self.generation`) and its `voicepipe.json` the trained language (`self.language`,
        used when a request says none or "auto"); `language` overrides the latter."""
        from voicepipe.models.prompt import PromptIds, model_dir_of, normalize_language, trained_language

        self.tts = tts
        self.model = tts.model
        self.model_dir = Path(model_dir) if model_dir is not None else model_dir_of(tts)
        file_cfg = GenerationConfig.file_of(tts, self.model_dir)
        self.generation = GenerationConfig.from_dict(file_cfg)
        cfg = config or EngineConfig()
        cfg = replace(cfg, top_k=cfg.top_k if cfg.top_k is not None else int(file_cfg.get("top_k") or 50),
                      subtalker_top_k=cfg.subtalker_top_k if cfg.subtalker_top_k is not None
                      else int(file_cfg.get("subtalker_top_k") or 50))  # fmt: skip
        for k in ("top_p", "subtalker_top_p"):
            if float(file_cfg.get(k, 1.0) or 1.0) < 1.0:
                log.warning("generation_config.json sets %s=%s; the engine samples with top-k only", k, file_cfg[k])
        self.cfg = cfg
        self.language = normalize_language(language) if language else trained_language(self.model_dir)
        self.prompt_ids = PromptIds.from_config(self.model.config)
        self.talker = self.model.talker
        self.cp = self.talker.code_predictor
        tc = self.model.config.talker_config
        self.tc = tc
        p = next(self.talker.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.use_graphs = self.device.type == "cuda" if self.cfg.cuda_graphs is None else self.cfg.cuda_graphs
        self.sample_rate = SAMPLE_RATE
        self._alloc()
        self.codec_fused = self._fuse_codec()
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self._pool = None
        self._pending: collections.deque[RequestHandle] = collections.deque()
        self._to_wake: list[RequestHandle] = []  # admitted, `on_admitted` not called yet (`_wake_admitted`)
        self._expected = 0  # announced requests still being prepared (`expect`)
        self._last_expect = float("-inf")  # when a request was last announced (`admit_gap_ms`)
        self._slots: list[RequestHandle | None] = [None] * self.cfg.max_batch
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        self._dq: queue.Queue = queue.Queue()
        self._decoder: threading.Thread | None = None
        self.steps = 0  # frame steps whose codes were read
        self.launched = 0  # frame steps launched
        self.prefills = 0  # batched prefills run (a burst admitted over several steps takes several)

    # ------------------------------------------------------------------ state
    def _alloc(self) -> None:
        c, tc, dev, dt = self.cfg, self.tc, self.device, self.dtype
        S, H = c.max_batch, tc.hidden_size
        self.hd = getattr(tc, "head_dim", H // tc.num_attention_heads)
        self.nh, self.kvh = tc.num_attention_heads, tc.num_key_value_heads
        pc = self.cp.model.config
        self.p_hd = getattr(pc, "head_dim", pc.hidden_size // pc.num_attention_heads)
        self.p_nh, self.p_kvh = pc.num_attention_heads, pc.num_key_value_heads
        self.n_groups = tc.num_code_groups
        n_pred = self.n_groups - 1
        try:
            with torch.no_grad():
                self.t_layers = [_fuse_layer(x, self.nh, self.kvh) for x in self.talker.model.layers]
                self.p_layers = [_fuse_layer(x, self.p_nh, self.p_kvh) for x in self.cp.model.layers]
        except FusedLayerError as e:
            raise EngineError(str(e)) from e
        L = c.max_len
        self.kc = [torch.zeros(S, self.kvh, L, self.hd, device=dev, dtype=dt) for _ in self.talker.model.layers]
        self.vc = [torch.zeros_like(k) for k in self.kc]
        self.pk = [torch.zeros(S, self.p_kvh, n_pred + 1, self.p_hd, device=dev, dtype=dt)
                   for _ in self.cp.model.layers]
        self.pv = [torch.zeros_like(k) for k in self.pk]
        V = tc.vocab_size
        self.pos = torch.zeros(S, dtype=torch.long, device=dev)
        self.active = torch.zeros(S, dtype=torch.long, device=dev)
        self.gen_step = torch.zeros(S, dtype=torch.long, device=dev)
        self.next_emb = torch.zeros(S, H, device=dev, dtype=dt)
        self.text_buf = torch.zeros(S, c.max_text, H, device=dev, dtype=dt)
        self.text_len = torch.zeros(S, dtype=torch.long, device=dev)
        self.seen = torch.zeros(S, V, dtype=torch.bool, device=dev)
        self.n_sampled = torch.zeros(S, dtype=torch.long, device=dev)
        self.min_new = torch.zeros(S, dtype=torch.long, device=dev)
        self.temp = torch.ones(S, 1, device=dev)
        self.greedy = torch.zeros(S, dtype=torch.bool, device=dev)
        self.sub_temp = torch.ones(S, 1, device=dev)
        self.sub_greedy = torch.zeros(S, dtype=torch.bool, device=dev)
        self.rep_pen = torch.ones(S, 1, device=dev)
        self.out_codes = torch.zeros(S, self.n_groups, dtype=torch.long, device=dev)
        self._host_codes_pair = [torch.zeros(S, self.n_groups, dtype=torch.long, pin_memory=dev.type == "cuda")
                                 for _ in range(2)]
        self.ar = torch.arange(L, device=dev)
        self.slot_idx = torch.arange(S, device=dev)
        sup = torch.zeros(V, dtype=torch.bool, device=dev)
        sup[V - 1024 :] = True
        sup[tc.codec_eos_token_id] = False
        self.suppress = sup
        self.eos = tc.codec_eos_token_id
        with torch.no_grad():
            dummy = torch.zeros(1, device=dev, dtype=dt)
            cos, sin = self.talker.model.rotary_emb(dummy, self.ar.view(1, 1, -1).expand(3, 1, -1))
            # MRoPE with equal temporal/height/width positions (always so for TTS) is plain 1-D RoPE.
            # rotate_half(x) * sin == roll(x, hd/2) * (sin with its first half negated)
            self.cos, self.sin = cos[0, 0], signed_sin(sin[0, 0])  # [L, hd]
            pcos, psin = self.cp.model.rotary_emb(dummy, torch.arange(n_pred + 1, device=dev)[None])
            self.pcos, self.psin = pcos[0], signed_sin(psin[0])  # [16, hd]
            ids = torch.tensor(
                [[self.model.config.tts_bos_token_id, self.model.config.tts_eos_token_id,
                  self.model.config.tts_pad_token_id]], device=dev)
            bos, eos, pad = self._text_embed(ids)[0]
            self.tts_bos, self.tts_eos, self.tts_pad = bos, eos, pad

    def _text_embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.talker.text_projection(self.talker.get_text_embeddings()(ids))

    def _codec_embed(self, ids: list[int] | torch.Tensor) -> torch.Tensor:
        if not isinstance(ids, torch.Tensor):
            ids = torch.tensor(ids, device=self.device)
        return self.talker.get_input_embeddings()(ids)

    # ------------------------------------------------------------------ prompts
    @property
    def speakers(self) -> list[str]:
        """Speaker names of a custom-voice checkpoint (lower-case), [] for a base model."""
        return sorted((self.tc.spk_id or {}).keys())

    @torch.inference_mode()
    def prepare(self, text: str, speaker: str | None = None, language: str | None = None,
                instruct: str | None = None, non_streaming_text: bool | None = None, embed: bool = True) -> Prompt:
        """Build the talker prompt with `voicepipe.models.prompt.build_prompt` (the layout training used and the
        package's `generate` uses). `language` None or "auto": the checkpoint's trained language. `embed` False:
        the layout only (every check done), embedded on the engine thread at admission (`_embed_prompts`)."""
        from voicepipe.models.prompt import AUTO, PromptError, build_prompt, instruct_ids

        nst = self.cfg.non_streaming_text if non_streaming_text is None else non_streaming_text
        lang = (language or AUTO).lower()
        if lang == AUTO:
            lang = self.language
        proc = self.tts.processor
        try:
            layout = build_prompt(self.prompt_ids, self._assistant_ids(text), speaker=speaker, language=lang,
                                  instruct=instruct_ids(proc, instruct) if instruct else None,
                                  non_streaming_text=nst)  # fmt: skip
        except PromptError as e:
            raise EngineError(str(e)) from None
        if layout.trailing_ids.shape[0] > self.cfg.max_text:
            n = layout.trailing_ids.shape[0]
            raise EngineError(f"text is too long for streaming-text mode ({n} > {self.cfg.max_text} tokens)")
        if layout.length + 16 > self.cfg.max_len:
            raise EngineError(f"prompt of {layout.length} tokens does not fit the cache ({self.cfg.max_len})")
        if not embed:
            return Prompt(embeds=None, trailing=None, layout=layout)
        dev = self.device
        # a request thread: on the engine's stream its copies and kernels would wait for the frame steps queued
        # there (one ~7 ms step per admitted request while a burst arrives); a side stream runs beside them
        side = self._prepare_stream() if self.cfg.prepare_stream and dev.type == "cuda" else None
        with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
            text = self._text_embed(layout.text_ids.to(dev))
            codec = self._codec_embed(layout.codec_ids.to(dev))
            embeds = torch.where(layout.text_mask.to(dev)[:, None], text, 0)
            embeds = torch.where(layout.codec_mask.to(dev)[:, None], embeds + codec, embeds)
            trailing = self._text_embed(layout.trailing_ids.to(dev))
            prompt = Prompt(embeds=embeds.to(self.dtype), trailing=trailing.to(self.dtype), layout=layout)
        if side is not None:
            side.synchronize()  # ready before submit(); the engine's stream reads it later
        return prompt

    def _assistant_ids(self, text: str) -> torch.Tensor:
        """The text's role + text tokens (`voicepipe.models.prompt.assistant_ids`), through the tokenizer's backend
        (`assistant_ids_fast`) once a first text has given the same ids both ways; else the processor's path."""
        from voicepipe.models.prompt import assistant_ids, assistant_ids_fast

        proc = self.tts.processor
        fast = self.__dict__.get("_fast_tokens")
        if fast is None:  # first call (a race here only means two threads both check)
            ids = assistant_ids(proc, text)
            quick = assistant_ids_fast(proc, text)
            fast = quick is not None and torch.equal(quick, ids)
            if quick is not None and not fast:
                log.warning("the tokenizer's backend gives other ids than its processor: prompts use the processor")
            self._fast_tokens = fast
            return ids
        quick = assistant_ids_fast(proc, text) if fast else None
        return quick if quick is not None else assistant_ids(proc, text)

    def _embed_prompts(self, prompts: list[Prompt]) -> None:
        """Embed the prompts prepared with `embed=False`, all in one batch (the rows are independent: the same
        operations as `prepare`, on the concatenated ids), on the engine thread's stream."""
        todo = [p for p in prompts if p.embeds is None]
        if not todo:
            return
        dev, lay = self.device, [p.layout for p in todo]
        n_text = [int(x.text_ids.shape[0]) for x in lay]
        n_trail = [int(x.trailing_ids.shape[0]) for x in lay]
        ids = torch.cat([*(x.text_ids for x in lay), *(x.trailing_ids for x in lay)]).to(dev)
        emb = self._text_embed(ids)
        codec = self._codec_embed(torch.cat([x.codec_ids for x in lay]).to(dev))
        masks = torch.stack([torch.cat([x.text_mask for x in lay]), torch.cat([x.codec_mask for x in lay])]).to(dev)
        n = sum(n_text)
        embeds = torch.where(masks[0][:, None], emb[:n], 0)
        embeds = torch.where(masks[1][:, None], embeds + codec, embeds).to(self.dtype)
        trailing = emb[n:].to(self.dtype)
        for p, e, t in zip(todo, embeds.split(n_text), trailing.split(n_trail), strict=True):
            p.embeds, p.trailing = e, t

    def _prepare_stream(self) -> torch.cuda.Stream:
        """One side stream per request thread (prepare may run in several threads at once)."""
        local = self.__dict__.setdefault("_prep_local", threading.local())
        if getattr(local, "stream", None) is None:
            local.stream = torch.cuda.Stream(self.device)
        return local.stream

    # ------------------------------------------------------------------ loop
    def start(self) -> TTSEngine:
        """Start the scheduler thread (idempotent)."""
        if self._thread is None:
            # two busy Python threads (frame steps, codec decode): hand the GIL over quickly (default 5 ms)
            sys.setswitchinterval(min(sys.getswitchinterval(), 0.0005))
            self._stop = False
            if self.cfg.decode_thread:
                self._decoder = threading.Thread(target=self._decode_loop, name="tts-codec", daemon=True)
                self._decoder.start()
            self._thread = threading.Thread(target=self._loop, name="tts-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the scheduler; requests still queued or running get an error event."""
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if self._decoder is not None:
            self._dq.put(None)
            self._decoder.join(timeout=30)
            self._decoder = None

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    @property
    def active_count(self) -> int:
        return sum(r is not None for r in self._slots)

    def expect(self, n: int = 1) -> None:
        """Announce `n` requests whose prompts are being prepared (negative: withdraw them); `submit(...,
        expected=True)` withdraws one as it queues it. An idle engine waits for announced requests before its
        prefill (`admit_wait_ms`), so clients of one burst share it."""
        with self._cv:
            self._expected = max(0, self._expected + n)
            if n > 0:
                self._last_expect = time.perf_counter()
            self._cv.notify_all()

    def submit(self, prompt: Prompt, gen: GenerationConfig | None, on_event: Callable[[Event], None], *,
               expected: bool = False) -> RequestHandle:  # fmt: skip
        """Queue a prepared prompt; events arrive on the engine thread through `on_event`. `expected`: it was
        announced with `expect()`."""
        req = RequestHandle(prompt, gen or self.generation, on_event)  # None: the checkpoint's sampling
        with self._cv:
            if expected:
                self._expected = max(0, self._expected - 1)
            if self._stop or self._thread is None:
                raise EngineError("engine is not running")
            self._pending.append(req)
            self._cv.notify_all()
        return req

    def _finish(self, req: RequestHandle, reason: str) -> None:
        if req.slot is not None:
            self.active[req.slot] = 0
            self._slots[req.slot] = None
        now = time.perf_counter()
        frames = len(req.frames)
        stats = {
            "frames": frames,
            "audio_s": frames * SAMPLES_PER_FRAME / SAMPLE_RATE,
            "ttfa_s": None,
            "wall_s": now - req.submitted,
            "queue_s": None if req.admitted_at is None else req.admitted_at - req.submitted,
            "reason": reason,
        }
        if reason == "cancelled":
            req.finished.set()
        else:  # after its last audio chunk, which is still in the decode queue
            self._queue_job(("done", req, Event("done", stats=stats)))

    def _admit(self) -> None:
        """Move queued requests into free slots (one batched prefill for all of them)."""
        batch: list[tuple[int, RequestHandle]] = []
        free = [i for i, r in enumerate(self._slots) if r is None]
        while self._pending and len(batch) < len(free):
            req = self._pending.popleft()
            if req.cancelled:
                req.finished.set()
                continue
            batch.append((free[len(batch)], req))
        if not batch:
            return
        t_start, gpu_start = time.perf_counter(), self._gpu_mark()
        try:
            self._embed_prompts([r.prompt for _, r in batch])
            t_embedded, gpu_embedded = time.perf_counter(), self._gpu_mark()
            self._prefill([s for s, _ in batch], [r.prompt for _, r in batch])
        except Exception as e:  # noqa: BLE001 - report to the requests, keep serving others
            log.exception("prefill failed")
            for _, req in batch:
                self._send(req, Event("error", message=f"prefill failed: {e}"))
                req.finished.set()
            return
        self.prefills += 1
        now = time.perf_counter()
        gpu_end = self._gpu_mark()
        self._arm_many([s for s, _ in batch], [r.gen for _, r in batch])
        for slot, req in batch:
            req.slot = slot
            req.admitted_at = now
            req.marks.update(prefill_start=t_start, embedded=t_embedded, admitted=now)
            if gpu_start is not None:
                req.gpu_marks = [("gpu_prefill_start", gpu_start), ("gpu_embedded", gpu_embedded),
                                 ("gpu_prefill_end", gpu_end)]
            req.frame_budget = min(req.gen.max_new_tokens, self.cfg.max_len - req.prompt.embeds.shape[0])
            self._slots[slot] = req
            req.admitted.set()
            self._to_wake.append(req)

    def _wake_admitted(self) -> None:
        """Call the admitted requests' `on_admitted` (after their first frame step is launched: each wakes a server's
        event loop, whose work on the woken requests would otherwise hold the GIL while the engine launches it;
        H200, 16 HTTP clients: 5.9-14.5 ms from admission to that launch before, 2.5-5.2 ms after (two calls);
        ~1 ms in-process)."""
        wake, self._to_wake = self._to_wake, []
        for req in wake:
            if req.on_admitted is not None:
                try:
                    req.on_admitted()
                except Exception:  # noqa: BLE001 - a broken waiter must not take the engine down
                    log.exception("admission callback of request %s failed", req.id)

    def _gather_burst(self) -> None:
        """Idle engine, request(s) queued: wait while announced requests are still being prepared, and (with
        `admit_gap_ms`) until none has been announced for that long, until the free slots are taken or
        `admit_wait_ms` passed. Nothing announced: no wait at all."""
        free = sum(r is None for r in self._slots)
        deadline = time.perf_counter() + self.cfg.admit_wait_ms / 1e3
        gap = self.cfg.admit_gap_ms / 1e3
        with self._cv:
            while len(self._pending) < free and not self._stop and (left := deadline - time.perf_counter()) > 0:
                if self._expected > 0:
                    self._cv.wait(timeout=left)
                    continue
                quiet = time.perf_counter() - self._last_expect
                if quiet >= gap:
                    break
                self._cv.wait(timeout=min(left, gap - quiet))

    def _chunk_due(self, r: RequestHandle, n_new: int) -> bool:
        """Whether `r`'s new frames go to the codec now. Chunk sizes ramp up (1, 1, 2, 4, 8, ... frames) so playback
        never waits for a big chunk; once a request has `chunk_frames` out, its chunks end on the engine's global
        cadence (every `chunk_frames` steps), so requests admitted at different steps decode their windows
        together, one batched call per cadence, instead of one call each at its own phase."""
        chunk = self.cfg.chunk_frames
        if r.emitted < chunk:
            return n_new >= min(chunk, max(self.cfg.first_chunk_frames, r.emitted))
        return self.steps % chunk == 0  # one step adds one frame: at most `chunk` new frames wait for a tick

    def _loop(self) -> None:
        # `overlap_host`: the step launched last, whose codes are read only after the next step is launched, so the
        # GPU runs step n+1 while the host reads step n's codes, emits audio and retires requests
        inflight: tuple | None = None
        try:
            with torch.inference_mode():
                while True:
                    with self._cv:
                        while (not self._stop and not self._pending and not any(self._slots)
                               and inflight is None):
                            self._cv.wait(timeout=0.5)
                        if self._stop:
                            break
                    if self.cfg.admit_wait_ms > 0 and not any(self._slots) and inflight is None:
                        self._gather_burst()
                    with self._step_lock:  # an explicit capture() never interleaves with a step
                        self._admit()
                    for r in list(self._slots):
                        if r is not None and r.cancelled:
                            self._finish(r, "cancelled")
                    live = [(i, r) for i, r in enumerate(self._slots) if r is not None]
                    launched = None
                    if live:
                        b_needed = max(i for i, _ in live) + 1
                        # + 1 for a step still in flight: its frame is on the device, not yet in r.frames
                        l_needed = min(self.cfg.max_len,
                                       max(int(r.prompt.embeds.shape[0]) + len(r.frames) for _, r in live) + 1)
                        with self._step_lock:
                            self._run_step(b_needed, l_needed)
                            launched = self._read_later(b_needed, live)
                    self._wake_admitted()
                    # a step holding a request's first frame is read before the next is launched, so that its first
                    # windows' decode goes ahead of that step on the GPU (`first_decode_alone`)
                    first = launched is not None and self._first_decode_here and any(r.launched == 1 for _, r in live)
                    if launched is not None and (not self.cfg.overlap_host or first):
                        if inflight is not None:
                            self._retire(*inflight)
                            inflight = None
                        self._retire(*launched)
                        launched = None
                    if inflight is not None:
                        self._retire(*inflight)
                    inflight = launched
        except Exception as e:  # noqa: BLE001 - fail every request loudly rather than hang them
            log.exception("engine loop crashed")
            msg = f"engine failure: {e}"
        else:
            msg = "engine stopped"
        with self._cv:  # from here on submit() refuses: a crashed loop must leave no request waiting forever
            self._stop = True
            dead = [r for r in self._slots if r is not None] + list(self._pending)
            self._pending.clear()
        for r in dead:
            self._send(r, Event("error", message=msg))
            r.finished.set()
        self._slots = [None] * self.cfg.max_batch
        self.active.zero_()

    def _gpu_mark(self) -> torch.cuda.Event | None:
        """A timing event recorded on the current stream (CUDA; None elsewhere): where the GPU is, for `marks`."""
        if self.device.type != "cuda":
            return None
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def _read_later(self, b: int, live: list[tuple[int, RequestHandle]]) -> tuple:
        """Queue the copy of the step's codes into one of two pinned host buffers (behind the step, on its stream);
        `_retire` waits for it."""
        buf = self._host_codes_pair[self.launched % 2]
        self.launched += 1
        now = time.perf_counter()
        ev_step = None
        for _, r in live:
            r.launched += 1
            if r.launched <= 2:
                r.marks[f"step{r.launched}_launched"] = now
                if r.gpu_marks:
                    ev_step = self._gpu_mark() if ev_step is None else ev_step
                    r.gpu_marks.append((f"gpu_step{r.launched}_end", ev_step))
        if self.device.type != "cuda":
            return buf[:b].copy_(self.out_codes[:b]), None, live
        buf[:b].copy_(self.out_codes[:b], non_blocking=True)
        ev = torch.cuda.Event()
        ev.record()
        return buf[:b], ev, live

    def _retire(self, codes: torch.Tensor, ev: torch.cuda.Event | None, live: list[tuple[int, RequestHandle]]
                ) -> None:  # fmt: skip
        """A finished step's codes: append each live request's frame, hand due chunks to the codec, end requests at
        EOS or their frame budget. A request that ended (or was cancelled) after this step was launched is skipped:
        the step computed one more frame for its slot, which nobody reads."""
        if ev is not None:
            wait_event(ev)
        now = time.perf_counter()
        codes = codes.clone()
        self.steps += 1
        due: list[RequestHandle] = []
        ended: list[tuple[RequestHandle, str]] = []
        for i, r in live:
            if self._slots[i] is not r:
                continue
            c = codes[i]
            if int(c[0]) == self.eos:
                ended.append((r, "eos"))
            else:
                r.frames.append(c)
                if len(r.frames) <= 2:
                    r.marks[f"frame{len(r.frames)}"] = now
                if len(r.frames) >= r.frame_budget:
                    ended.append((r, "length"))
            n_new = len(r.frames) - r.emitted
            final = any(e is r for e, _ in ended)
            if n_new > 0 and (final or self._chunk_due(r, n_new)):
                due.append(r)
        if due:
            self._emit_audio(due)
        for r, why in ended:
            self._finish(r, why)

    # ------------------------------------------------------------------ sync helpers
    def stream(self, prompt: Prompt, gen: GenerationConfig | None = None) -> Iterator[np.ndarray]:
        """Blocking generator of audio chunks (float32, 24 kHz) for one prompt."""
        q: queue.Queue[Event] = queue.Queue()
        req = self.submit(prompt, gen, q.put)
        try:
            while True:
                ev = q.get()
                if ev.kind == "audio":
                    yield ev.audio
                elif ev.kind == "done":
                    self.last_stats = ev.stats
                    return
                else:
                    raise EngineError(ev.message)
        finally:
            req.cancel()

    def generate_codes(self, prompt: Prompt, gen: GenerationConfig | None = None) -> torch.Tensor:
        """Run one prompt to the end; returns its codes [frames, 16] (for parity checks)."""
        q: queue.Queue[Event] = queue.Queue()
        req = self.submit(prompt, gen, q.put)
        while True:
            ev = q.get()
            if ev.kind == "done":
                return torch.stack(req.frames) if req.frames else torch.zeros(0, self.n_groups, dtype=torch.long)
            if ev.kind == "error":
                raise EngineError(ev.message)
