"""The frame step (talker step, sampling, the code predictor's 15 steps), batched prefill, and its CUDA graphs.

A mixin of `TTSEngine`: it reads the engine's static buffers (`_alloc` in `core.py`) and writes only slots [0, b).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from voicepipe.serve.engine import fused, gemv, persistent
from voicepipe.serve.engine import kernels as K
from voicepipe.serve.engine.kernels import decoder_layer

if TYPE_CHECKING:
    from voicepipe.serve.engine.core import GenerationConfig, Prompt

log = logging.getLogger("voicepipe.serve.engine")


def _bucket_sizes(max_batch: int) -> list[int]:
    sizes = [1]
    while sizes[-1] < max_batch:
        sizes.append(min(sizes[-1] * 2, max_batch))
    return sizes


class _SharedSdpaKernel:
    """`torch.nn.attention.sdpa_kernel(backends)` for several threads at once. Its backend flags are process-wide,
    not per thread, and each `sdpa_kernel` restores the flags it saw on entry: two engines' threads (two voices of
    one server) prefilling at once interleaved their enter/exit and left cuDNN's SDPA off for the whole process.
    Counted: the first thread in enters one `sdpa_kernel`, the last one out leaves it. (An engine that allows cuDNN
    still meets it disabled while another engine's prefill runs: the flags cannot differ per thread.)"""

    def __init__(self, backends: list[SDPBackend]) -> None:
        self.backends = backends
        self._lock = threading.Lock()
        self._inside = 0
        self._ctx: contextlib.AbstractContextManager | None = None

    def __enter__(self) -> None:
        with self._lock:
            if self._inside == 0:
                self._ctx = sdpa_kernel(self.backends)
                self._ctx.__enter__()
            self._inside += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._inside -= 1
            if self._inside == 0 and self._ctx is not None:
                self._ctx.__exit__(None, None, None)
                self._ctx = None


# attention backends of the (eager) prefill: cuDNN's SDPA builds a plan for every (batch, prompt length) it has not
# seen, 50-90 ms on an H200 (benchmarks/prefill_first.py), so a burst split or a prompt length seen for the first time
# paid it inside a request's time to first audio; flash attention needs no per-shape plan
_NO_CUDNN_SDPA = _SharedSdpaKernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


class FrameStep:
    """Device-side generation: one frame for every active slot, as one graph replay on CUDA."""

    @property
    def _step_lock(self) -> threading.RLock:
        """Serialises frame steps, prefills and graph captures (the scheduler thread vs. an explicit `capture()`)."""
        lock = self.__dict__.get("_step_lock_")
        if lock is None:
            lock = self.__dict__.setdefault("_step_lock_", threading.RLock())
        return lock

    # ------------------------------------------------------------------ units
    def _build_units(self) -> SimpleNamespace:
        """The four per-frame units bound to this engine's weights and buffers: plain functions, or compiled ones
        (`EngineConfig.compile`; one dynamic-batch compile per unit, fused elementwise work, eager RNG semantics)."""
        tc, pc = self.tc, self.cp.model.config
        small = self.small_gemv
        fs = self.fused_sample
        td = K.Dims(self.nh, self.kvh, self.hd, small, fs, attn=self.fused_talker_attn, mm=self.fused_talker_mm)
        pd = K.Dims(self.p_nh, self.p_kvh, self.p_hd, small, fs, head=self.fused_head,
                    split=max(1, int(self.cfg.fused_split_k)))
        samp = K.Sampling(self.temp, self.greedy, self.sub_temp, self.sub_greedy, self.rep_pen, self.seen,
                          self.n_sampled, self.min_new)
        proj = self.cp.small_to_mtp_projection
        proj_w, proj_b = (proj.weight, proj.bias) if isinstance(proj, torch.nn.Linear) else (None, None)
        t_norm, p_norm = self.talker.model.norm, self.cp.model.norm
        # closures hold plain numbers only, so engines of one shape share their compiled units
        t_eps, p_eps = float(t_norm.variance_epsilon), float(p_norm.variance_epsilon)
        top_k, sub_k, eos = min(self.cfg.top_k, tc.vocab_size), min(self.cfg.subtalker_top_k, pc.vocab_size), self.eos

        def talker_layer(w, x, kc, vc, p, cos, sin, mask):
            return K.talker_layer(w, x, kc, vc, p, cos, sin, mask, td)

        def talker_head(x, norm_w, head_w, embed_w, suppress, samp, expo=None):
            return K.talker_head(x, norm_w, t_eps, head_w, embed_w, suppress, eos, samp, top_k, fs, expo)

        def predictor_first(layers, hidden, e0, pk, pv, cos, sin, proj_w, proj_b, norm_w, head_w, embed_w, samp,
                            expo=None):
            return K.predictor_first(layers, hidden, e0, pk, pv, cos, sin, proj_w, proj_b, norm_w, p_eps, head_w,
                                     embed_w, samp, sub_k, pd, expo)

        def predictor_next(layers, e, pk, pv, pos, cos, sin, mask, proj_w, proj_b, norm_w, head_w, embed_w, samp,
                           expo=None):
            return K.predictor_next(layers, e, pk, pv, pos, cos, sin, mask, proj_w, proj_b, norm_w, p_eps, head_w,
                                    embed_w, samp, sub_k, pd, expo)

        def predictor_next_small(layers, e, pk, pv, pos, cos, sin, mask, proj_w, proj_b, norm_w, head_w, embed_w,
                                 samp, expo=None):
            return K.predictor_next_fused(layers, e, pk, pv, pos, cos, sin, mask, proj_w, proj_b, norm_w, p_eps,
                                          head_w, embed_w, samp, sub_k, pd, expo)

        def predictor_next_one(layers, e, pk, pv, pos, cos, sin, mask, proj_w, proj_b, norm_w, head_w, embed_w,
                               samp):
            return persistent.predictor_next(layers, e, pk, pv, pos, cos, sin, mask, proj_w, proj_b, norm_w, p_eps,
                                             head_w, embed_w, samp, sub_k, pd)

        fns = dict(talker_layer=talker_layer, talker_head=talker_head, predictor_first=predictor_first,
                   predictor_next=predictor_next)
        if self.fused_predictor:
            fns["predictor_next_small"] = predictor_next_small
        if self.persistent_predictor:
            fns["predictor_next_one"] = predictor_next_one
        # per predictor position 2..15: the position, its RoPE rows and its attention mask over the 16-slot cache
        ar = torch.arange(self.n_groups, device=self.device)
        ptab = [(torch.tensor([i], device=self.device), self.pcos[i : i + 1, None].clone(),
                 self.psin[i : i + 1, None].clone(), (ar <= i)[None]) for i in range(self.n_groups)]
        p01 = (self.pcos[:2, None].clone(), self.psin[:2, None].clone())
        tables = (K.projected_tables([m.weight for m in self.cp.model.codec_embedding], proj_w, proj_b, small)
                  if self.proj_table and proj_w is not None else None)
        backend = self.cfg.compile if isinstance(self.cfg.compile, str) else "inductor"
        if self.compiled:
            # every full-size buffer, weight and table keeps its shape; only the batch (and the talker's length
            # bucket) stays symbolic, so one compile per unit serves every (batch, length) bucket
            static = [*self.kc, *self.vc, *self.pk, *self.pv, *samp, self.suppress, t_norm.weight, p_norm.weight,
                      self.talker.codec_head.weight, self.talker.get_input_embeddings().weight, *p01,
                      *(m.weight for m in self.cp.lm_head), *(m.weight for m in self.cp.model.codec_embedding),
                      *(t for w in [*self.t_layers, *self.p_layers] for t in w if isinstance(t, torch.Tensor)),
                      *(t for row in ptab for t in row), *(t for t in (proj_w, proj_b) if t is not None),
                      *(tables or [])]
            for t in static:
                torch._dynamo.mark_static(t)
            # inductor: sampling draws its random numbers exactly as the eager path does
            opts = {"fallback_random": True, **(self.cfg.compile_options or {})} if backend == "inductor" else None
            fns = {k: torch.compile(f, backend=backend, dynamic=True, fullgraph=True, options=opts)
                   for k, f in fns.items()}
        return SimpleNamespace(**fns, samp=samp, proj=(proj_w, proj_b), ptab=ptab, p01=p01, tables=tables,
                               top_k=(top_k, sub_k))

    @property
    def compiled(self) -> bool:
        """Whether the frame-step units run compiled (`EngineConfig.compile`; default: with CUDA graphs)."""
        c = self.cfg.compile
        return (self.use_graphs if c is None else bool(c)) and not self._compile_failed

    _compile_failed = False

    @property
    def small_gemv(self) -> bool:
        """Whether the frame step's small weights go through the Triton GEMV (`EngineConfig.small_gemv`; default:
        with compiled units, on CUDA with Triton)."""
        c = self.cfg.small_gemv
        return (self.compiled if c is None else bool(c)) and gemv.available(self.device)

    @property
    def fused_predictor(self) -> bool:
        """Whether a step of at most `EngineConfig.fused_rows` rows runs the code predictor's layers as fused kernels
        (`EngineConfig.fused_predictor`; default: with compiled units, on CUDA with Triton)."""
        c = self.cfg.fused_predictor
        return (self.compiled if c is None else bool(c)) and fused.available(self.device)

    @property
    def persistent_predictor(self) -> bool:
        """Whether a step of 1-2 rows runs each code-predictor step as one persistent kernel (`persistent.py`;
        `EngineConfig.persistent_predictor`, with the fused predictor and fused sampling)."""
        return (bool(self.cfg.persistent_predictor) and self.fused_predictor and self.fused_sample
                and persistent.available(self.device))

    @property
    def _fused_rows(self) -> int:
        return max(0, min(int(self.cfg.fused_rows), fused.DOT_ROWS))

    @property
    def fused_head(self) -> bool:
        """Whether the fused predictor step's final norm + code head is one kernel and its sampling + the code's
        embedding another (`EngineConfig.fused_head`; default: with the fused predictor layer and fused sampling)."""
        c = self.cfg.fused_head
        return (self.fused_predictor and self.fused_sample) if c is None else bool(c) and fused.available(self.device)

    @property
    def early_draws(self) -> bool:
        """Whether the step makes its sampling draws before its layers (`EngineConfig.early_draws`; default: on
        CUDA)."""
        c = self.cfg.early_draws
        return self.device.type == "cuda" if c is None else bool(c)

    @property
    def proj_table(self) -> bool:
        """Whether a one-row step samples the predictor's codes with projected embedding tables
        (`EngineConfig.proj_table`; default: with the fused predictor)."""
        c = self.cfg.proj_table
        return self.fused_predictor if c is None else bool(c)

    @property
    def fused_talker_attn(self) -> bool:
        """Whether the talker's attention runs as one kernel per layer (`EngineConfig.fused_talker_attn`; None: with
        compiled units on CUDA with Triton)."""
        c = self.cfg.fused_talker_attn
        return (c is None or bool(c)) and self.compiled and fused.available(self.device)

    @property
    def fused_talker_mm(self) -> bool:
        """Whether a one-row step runs the talker's matmuls as fused ops (`EngineConfig.fused_talker_mm`; needs the
        fused talker attention)."""
        return bool(self.cfg.fused_talker_mm) and self.fused_talker_attn

    @property
    def fused_sample(self) -> bool:
        """Whether the step's 16 codes are sampled by one kernel each (`fused.sample_topk`, the same draws) instead
        of ~10 (top-k, softmax, race) (`EngineConfig.fused_sample`; default: with compiled units, on CUDA with
        Triton)."""
        c = self.cfg.fused_sample
        return (self.compiled if c is None else bool(c)) and fused.available(self.device)

    def _prefill_attention(self) -> contextlib.AbstractContextManager:
        """The SDPA backends the prefill may use (`EngineConfig.prefill_cudnn`: False excludes cuDNN's)."""
        return contextlib.nullcontext() if self.cfg.prefill_cudnn else _NO_CUDNN_SDPA

    @property
    def _units(self) -> SimpleNamespace:
        u = self.__dict__.get("_units_")
        if u is None:
            u = self.__dict__.setdefault("_units_", self._build_units())
        return u

    def _draw_early(self, b: int, one: bool) -> tuple[list[torch.Tensor | None], torch.cuda.Stream | None]:
        """The step's 16 sampling calls' exponential draws, in the order the calls make them (so the same numbers),
        before its layers (`EngineConfig.early_draws`): on CUDA on a stream of their own, beside the talker's layers
        (the caller joins it before the first sampling call). Off, or for the persistent predictor step (`one`,
        which draws its own): 16 Nones."""
        n = self.n_groups
        if not self.early_draws or one:
            return [None] * n, None
        kt, kp = self._units.top_k  # the talker's and the predictor's k, as their sampling calls take them
        side = None
        if self.device.type == "cuda":
            side = self.__dict__.get("_draw_stream")
            if side is None:
                side = self.__dict__.setdefault("_draw_stream", torch.cuda.Stream(self.device))
            side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
            ex = [K.draws(b, kt, self.device)] + [K.draws(b, kp, self.device) for _ in range(n - 1)]
        return ex, side

    def _step(self, b: int, L: int) -> None:
        """One frame for slots [0, b): everything on device, no host sync (graph-capturable)."""
        u = self._units
        nxt = u.predictor_next_small if b <= self._fused_rows and self.fused_predictor else u.predictor_next
        one = b <= persistent.MAX_ROWS and self.persistent_predictor
        if one:
            nxt = u.predictor_next_one
        ex, side = self._draw_early(b, one)
        # a copy (an inference tensor like every later layer's input): one traced variant of the layer unit
        x = self.next_emb[:b].unsqueeze(1).clone()
        p = self.pos[:b]
        cos, sin = self.cos[p][:, None, None], self.sin[p][:, None, None]  # [b,1,1,hd]
        mask = (self.ar[:L][None] <= p[:, None]).view(b, 1, 1, L)
        for i, w in enumerate(self.t_layers):
            x = u.talker_layer(w, x, self.kc[i], self.vc[i], p, cos, sin, mask)
        if side is not None:
            torch.cuda.current_stream(self.device).wait_stream(side)
        hidden, code0, e0 = u.talker_head(x, self.talker.model.norm.weight, self.talker.codec_head.weight,
                                          self.talker.get_input_embeddings().weight, self.suppress, u.samp, ex[0])
        self._last_hidden = hidden  # the talker's output (numerics checks; inside a graph: its static buffer)
        # code predictor: prefill [talker hidden, code-0 embedding] -> code 1, then 14 single steps -> codes 2..15
        heads = self.cp.lm_head
        # one row: the codes' rows of the projected tables ([projection | embedding]): no projection kernel a step
        tables = u.tables if b == 1 and not one else None
        embeds = tables or [m.weight for m in self.cp.model.codec_embedding]
        H = embeds[0].shape[1] if tables is None else self.tc.hidden_size
        _, c, e = u.predictor_first(self.p_layers, hidden, e0, self.pk, self.pv, *u.p01, *u.proj,
                                    self.cp.model.norm.weight, heads[0].weight, embeds[0], u.samp, ex[1])
        codes, embs = [code0, c], [e0, e[:, -H:]]
        for j in range(1, self.n_groups - 1):
            c, e = nxt(self.p_layers, e, self.pk, self.pv, *u.ptab[j + 1], *u.proj,
                       self.cp.model.norm.weight, heads[j].weight, embeds[j], u.samp, *(() if one else (ex[j + 1],)))
            codes.append(c)
            embs.append(e[:, -H:])
        emb = torch.stack(embs, 1).sum(1)
        gs = self.gen_step[:b]
        txt = self.text_buf[self.slot_idx[:b], gs.clamp(max=self.cfg.max_text - 1)]
        txt = torch.where((gs < self.text_len[:b])[:, None], txt, self.tts_pad[None])
        self.next_emb[:b] = emb + txt
        act = self.active[:b]
        self.gen_step[:b] += act
        self.pos[:b] = (p + act).clamp(max=self.cfg.max_len - 1)
        self.out_codes[:b] = torch.stack(codes, 1)

    def _prefill(self, slots: list[int], prompts: list[Prompt]) -> None:
        """Batched prefill of every prompt token but the last (which the next frame step consumes).

        Prompts are right-padded to one length: causal attention keeps each prompt to itself, and the padded K/V
        positions lie beyond the slot's position, masked out and overwritten as generation proceeds. With prefill
        graphs (`prefill_graphed`) the batch is padded further, to its (batch, length) bucket: the extra rows are
        copies of the last prompt written to its own slot (the same values twice), and the layers are one graph
        replay instead of ~550 kernel launches (eager, the prefill is bound by launching them)."""
        if len(slots) != len(prompts) or not all(0 <= s < self.cfg.max_batch for s in slots):
            # checked here, on the host: on CUDA a slot past the caches is a device-side assert that ends the process's
            # CUDA context (a benchmark did so on 2026-12-06, benchmarks/RESULTS.md)
            raise ValueError(f"prefill: slots {slots} for {len(prompts)} prompts; this engine has slots "
                             f"0-{self.cfg.max_batch - 1}")
        lens = [p.embeds.shape[0] - 1 for p in prompts]
        T = max(lens)
        n = len(slots)
        if T > 0:
            key = self._prefill_key(n, T) if self.prefill_graphed else None
            graph = self.__dict__.get("_prefill_graphs", {}).get((*key, self.prefill_compiled) if key else None)
            if key is not None and (graph is not None or self.device.type != "cuda"):
                n, T = key  # the graph's shapes (on the CPU: the same padding, run eagerly)
                slots = [*slots, *[slots[-1]] * (n - len(slots))]
                x, sl = self._prefill_buffers(n, T, graph is not None)
            else:
                x = torch.zeros(n, T, self.tc.hidden_size, device=self.device, dtype=self.dtype)
                sl = None
            for j, p in enumerate(prompts):
                x[j, : lens[j]] = p.embeds[: lens[j]]
            if len(prompts) < n:
                x[len(prompts) :] = x[len(prompts) - 1]
            if sl is None:
                sl = torch.tensor(slots, device=self.device)
            else:  # a static buffer: filled without a sync (pageable memory is staged before the call returns)
                sl.copy_(torch.tensor(slots), non_blocking=True)
            if graph is not None:
                graph.replay()
            else:
                self._prefill_layers(x, sl)
            slots = slots[: len(prompts)]
        # each slot's state in a few batched writes (a burst's 16 slots took ~80 small launches one by one)
        idx = self._to_device(torch.tensor(slots))
        lengths = self._to_device(torch.tensor([[t, p.trailing.shape[0]] for p, t in zip(prompts, lens, strict=True)]))
        self.pos.index_copy_(0, idx, lengths[:, 0])
        self.text_len.index_copy_(0, idx, lengths[:, 1])
        self.gen_step.index_fill_(0, idx, 0)
        self.next_emb.index_copy_(0, idx, torch.stack([p.embeds[t] for p, t in zip(prompts, lens, strict=True)]))
        for slot, p in zip(slots, prompts, strict=True):
            self.text_buf[slot, : p.trailing.shape[0]] = p.trailing

    def _prefill_layers(self, x: torch.Tensor, sl: torch.Tensor) -> None:
        """The talker's layers over right-padded prompts x [n, T, H], writing their K/V into the slots `sl` [n]."""
        n, T = x.shape[:2]
        cos, sin = self.cos[:T][:, None], self.sin[:T][:, None]

        def attend(q, k, v, kc, vc):
            kc[sl, :, :T] = k
            vc[sl, :, :T] = v
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            return o.transpose(1, 2).reshape(n, T, -1)

        units = self._prefill_units() if self.prefill_compiled else None
        with self._prefill_attention():
            for i, w in enumerate(self.t_layers):
                if units is None:
                    x = decoder_layer(w, x, self.nh, self.kvh, self.hd, cos, sin,
                                      functools.partial(attend, kc=self.kc[i], vc=self.vc[i]))
                else:  # the same layer, its norm/RoPE/SiLU/residual work fused by the compiler around the matmuls
                    q, k, v = units.qkv(w, x, cos, sin)
                    x = units.out_mlp(w, x, attend(q, k, v, self.kc[i], self.vc[i]))

    @property
    def prefill_compiled(self) -> bool:
        """Whether the prefill's layers run as compiled units (`EngineConfig.prefill_compile`; None: with compiled
        frame-step units)."""
        c = self.cfg.prefill_compile
        if c is None:  # the setting, not `compiled`: a failed step compile must not orphan the prefill's graphs
            c = self.use_graphs if self.cfg.compile is None else bool(self.cfg.compile)
        return bool(c) and not self._prefill_compile_failed

    _prefill_compile_failed = False

    def _prefill_units(self) -> SimpleNamespace:
        """The prefill layer's two halves around its attention (`kernels.attn_qkv`, `kernels.attn_out_mlp`), each
        compiled once (`EngineConfig.compile`'s backend; every weight static, the batch and length dynamic after the
        first shape: one compile serves every (batch, length) bucket)."""
        u = self.__dict__.get("_prefill_units_")
        if u is None:
            nh, kvh, hd = self.nh, self.kvh, self.hd
            backend = self.cfg.compile if isinstance(self.cfg.compile, str) else "inductor"
            for w in self.t_layers:
                for t in w:
                    if isinstance(t, torch.Tensor):
                        torch._dynamo.mark_static(t)

            def qkv(w, x, cos, sin):
                return K.attn_qkv(w, x, nh, kvh, hd, cos, sin)

            def out_mlp(w, x, o):
                return K.attn_out_mlp(w, x, o)

            u = self.__dict__.setdefault("_prefill_units_", SimpleNamespace(
                qkv=torch.compile(qkv, backend=backend, fullgraph=True),
                out_mlp=torch.compile(out_mlp, backend=backend, fullgraph=True)))
        return u

    # ------------------------------------------------------------------ prefill graphs
    @property
    def prefill_graphed(self) -> bool:
        """Whether prefills of the graphed sizes are padded to their bucket and (CUDA) replayed as graphs
        (`EngineConfig.prefill_graphs`; default: with CUDA graphs)."""
        c = self.cfg.prefill_graphs
        return self.use_graphs if c is None else bool(c)

    def _prefill_len_buckets(self) -> list[int]:
        """Prompt lengths a prefill graph takes: multiples of `EngineConfig.prefill_len_step` up to 256, of 64 up to
        512, then of 128."""
        step = max(1, int(self.cfg.prefill_len_step))
        out, t = [], step
        while t < self.cfg.max_len:
            out.append(t)
            t += step if t < 256 else 64 if t < 512 else 128
        return [*out, self.cfg.max_len]

    def _prefill_keys(self) -> list[tuple[int, int]]:
        """Every (batch bucket, length bucket) of at most `prefill_graph_tokens` tokens: the graphed prefills."""
        budget = self.cfg.prefill_graph_tokens
        return [(b, t) for b in _bucket_sizes(self.cfg.max_batch) for t in self._prefill_len_buckets()
                if b * t <= budget]

    def _prefill_key(self, n: int, T: int) -> tuple[int, int] | None:
        """The bucket a prefill of n prompts of at most T tokens pads to; None: larger than the graphed sizes."""
        b = next(s for s in _bucket_sizes(self.cfg.max_batch) if s >= n)
        t = next((t for t in self._prefill_len_buckets() if t >= T), None)
        return None if t is None or b * t > self.cfg.prefill_graph_tokens else (b, t)

    def _prefill_buffers(self, n: int, T: int, static: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Zeroed input [n, T, H] and slot indices [n]: views of the graphs' static buffers, or new tensors."""
        H = self.tc.hidden_size
        if not static:
            return (torch.zeros(n, T, H, device=self.device, dtype=self.dtype),
                    torch.zeros(n, dtype=torch.long, device=self.device))
        x = self._prefill_x[: n * T].view(n, T, H)
        x.zero_()
        return x, self._prefill_sl[:n]

    @torch.inference_mode()
    def capture_prefill(self, keys: list[tuple[int, int]] | None = None) -> float:
        """Capture the prefill graph of every (batch, length) bucket (`_prefill_keys`; `keys`: only these) for the
        current `prefill_compile` setting; returns seconds spent.

        Each is warmed up once eagerly first, which writes K/V into slot 0's cache: only done while no request holds
        a slot (start-up); otherwise skipped (prefills stay eager until a later call). No-op without graphs."""
        if not (self.use_graphs and self.prefill_graphed and self.device.type == "cuda"):
            return 0.0
        t0 = time.perf_counter()
        graphs = self.__dict__.setdefault("_prefill_graphs", {})
        mode = self.prefill_compiled
        keys = [k for k in (keys or self._prefill_keys()) if (*k, mode) not in graphs]
        with self._step_lock:
            if not keys:
                return 0.0
            if any(r is not None for r in getattr(self, "_slots", [])):
                log.warning("prefill graphs not captured: requests are running")
                return 0.0
            if "_prefill_x" not in self.__dict__:
                tokens = max(b * t for b, t in self._prefill_keys())
                self._prefill_x = torch.zeros(tokens, self.tc.hidden_size, device=self.device, dtype=self.dtype)
                self._prefill_sl = torch.zeros(self.cfg.max_batch, dtype=torch.long, device=self.device)
            self._pool = self._pool or torch.cuda.graph_pool_handle()
            failed = False
            for b, t in keys:
                x, sl = self._prefill_buffers(b, t, True)
                sl.zero_()
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    try:
                        self._prefill_layers(x, sl)  # lazy initialisation (and compilation) outside the capture
                    except Exception:
                        if not mode:
                            raise
                        log.exception("compiled prefill failed; prefills use the eager layers")
                        self._prefill_compile_failed = failed = True
                torch.cuda.current_stream().wait_stream(s)
                if failed:
                    break
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, pool=self._pool, capture_error_mode="thread_local"):
                    self._prefill_layers(x, sl)
                graphs[(b, t, mode)] = g
            torch.cuda.synchronize()
            if failed:  # the same buckets with the eager layers
                self.capture_prefill(keys)
        return time.perf_counter() - t0

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """A small host tensor on the engine's device without a host sync (CUDA: through pinned memory, copied
        behind the work already queued on the stream)."""
        if self.device.type != "cuda":
            return t
        return t.pin_memory().to(self.device, non_blocking=True)

    def _arm(self, slot: int, gen: GenerationConfig) -> None:
        self._arm_many([slot], [gen])

    def _arm_many(self, slots: list[int], gens: list[GenerationConfig]) -> None:
        """Sampling state of newly admitted slots, in ~10 batched writes for all of them. Was 9 writes per slot of a
        Python scalar (`self.temp[slot] = 0.9`), each a host sync (`torch.cuda.set_sync_debug_mode`), the first one
        waiting for the whole prefill on the GPU (benchmarks/RESULTS.md, 2026-12-04 17:37 UTC)."""
        idx = self._to_device(torch.tensor(slots))
        f = self._to_device(torch.tensor([[max(g.temperature, 1e-5), max(g.subtalker_temperature, 1e-5),
                                           g.repetition_penalty] for g in gens], dtype=self.temp.dtype))
        i = self._to_device(torch.tensor([[g.min_new_tokens, not g.do_sample, not g.subtalker_do_sample]
                                          for g in gens]))
        self.seen.index_fill_(0, idx, False)
        self.n_sampled.index_fill_(0, idx, 0)
        self.min_new.index_copy_(0, idx, i[:, 0])
        self.temp.index_copy_(0, idx, f[:, :1])
        self.greedy.index_copy_(0, idx, i[:, 1].bool())
        self.sub_temp.index_copy_(0, idx, f[:, 1:2])
        self.sub_greedy.index_copy_(0, idx, i[:, 2].bool())
        self.rep_pen.index_copy_(0, idx, f[:, 2:].to(self.rep_pen.dtype))
        self.active.index_fill_(0, idx, 1)

    # ------------------------------------------------------------------ graphs
    def _len_buckets(self) -> list[int]:
        lb, out = self.cfg.len_bucket, []
        n = lb
        while n < self.cfg.max_len:
            out.append(n)
            n *= 2
        out.append(self.cfg.max_len)
        return out

    def _batch_buckets(self) -> list[int]:
        sizes = _bucket_sizes(self.cfg.max_batch)
        # compiled units are traced with a symbolic batch, which excludes 1 (PyTorch specialises size-1 dims): one
        # stream runs in the 2-slot graph, unless `one_row_bucket` has the units traced once more for a batch of 1
        if not self.compiled or self.cfg.one_row_bucket:
            return sizes
        return [s for s in sizes if s > 1] or sizes

    def _pick(self, b_needed: int, l_needed: int) -> tuple[int, int]:
        b = next(s for s in self._batch_buckets() if s >= b_needed)
        L = next(n for n in self._len_buckets() if n >= l_needed) if self.use_graphs else l_needed
        return b, L

    # every buffer a frame step writes, except the KV caches (see `_warm_up`)
    _STEP_STATE = ("pos", "active", "gen_step", "next_emb", "seen", "n_sampled", "out_codes")

    @contextlib.contextmanager
    def _state_preserved(self) -> Iterator[None]:
        """Run throw-away frame steps without touching live requests: per-slot state and the RNG are restored after,
        and no slot advances meanwhile (`active` is zero), so the only cache writes land at each slot's current
        position, which its next real step overwrites before anything reads it."""
        cuda = self.device.type == "cuda"
        saved = {n: getattr(self, n).clone() for n in self._STEP_STATE}
        rng = torch.cuda.get_rng_state(self.device) if cuda else torch.get_rng_state()
        self.active.zero_()
        try:
            yield
        finally:
            for n, t in saved.items():
                getattr(self, n).copy_(t)
            if cuda:
                torch.cuda.set_rng_state(rng, self.device)
            else:
                torch.set_rng_state(rng)

    @torch.inference_mode()
    def _warm_up(self, b: int, L: int, n: int = 2) -> None:
        """`n` frame steps of bucket (b, L) for lazy initialisation (library handles, compilation) before a capture;
        safe while requests are running (`_state_preserved`)."""
        with self._state_preserved():
            for _ in range(n):
                self._step(b, L)

    @torch.inference_mode()
    def capture(self, batch_sizes: list[int] | None = None, lengths: list[int] | None = None) -> float:
        """Capture CUDA graphs for every (batch bucket, length bucket); returns seconds spent. Called with neither
        argument (start-up), also the codec's decode graph of every window shape (`capture_codec`).

        Safe at any time, also while requests run (a missing bucket is captured on first use): live slots' state,
        KV caches and the RNG stream are left as they were."""
        if not self.use_graphs:
            return 0.0
        t0 = time.perf_counter()
        if batch_sizes is None and lengths is None:
            self.capture_codec()
            self.capture_prefill()
        with self._step_lock:
            self._warm_prefill()
            self._pool = self._pool or torch.cuda.graph_pool_handle()
            for b in batch_sizes or self._batch_buckets():
                for L in lengths or self._len_buckets():
                    if (b, L) in self._graphs:
                        continue
                    s = torch.cuda.Stream()
                    s.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(s):
                        try:
                            self._warm_up(b, L)
                        except Exception:
                            if not self.compiled:
                                raise
                            log.exception("compiled frame step failed; falling back to eager units")
                            self._compile_failed = True
                            self.__dict__.pop("_units_", None)
                            self._warm_up(b, L)
                    torch.cuda.current_stream().wait_stream(s)
                    g = torch.cuda.CUDAGraph()
                    # thread_local: the codec thread and request threads may use CUDA while a bucket is captured.
                    # Recording runs nothing, so it writes no live state.
                    with torch.cuda.graph(g, pool=self._pool, capture_error_mode="thread_local"):
                        self._step(b, L)
                    self._graphs[(b, L)] = g
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    @torch.inference_mode()
    def _warm_prefill(self) -> None:
        """Run the prefill's attention once on throw-away tensors, so its kernels are loaded before the first request
        (it writes no engine state: safe while requests run)."""
        q = torch.randn(1, self.nh, 8, self.hd, device=self.device, dtype=self.dtype)
        k = torch.randn(1, self.kvh, 8, self.hd, device=self.device, dtype=self.dtype)
        with self._prefill_attention():
            F.scaled_dot_product_attention(q, k, k, is_causal=True, enable_gqa=True)

    def _run_step(self, b_needed: int, l_needed: int) -> None:
        b, L = self._pick(b_needed, l_needed)
        if self.use_graphs:
            g = self._graphs.get((b, L))
            if g is None:
                self.capture([b], [L])
                g = self._graphs[(b, L)]
            g.replay()
        else:
            self._step(b, L)
