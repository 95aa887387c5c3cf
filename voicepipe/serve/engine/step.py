"""The frame step (talker step, sampling, the code predictor's 15 steps), batched prefill, and its CUDA graphs.

A mixin of `TTSEngine`: it reads the engine's static buffers (`_alloc` in `core.py`) and writes only slots [0, b).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from voicepipe.serve.engine.kernels import _rms, decoder_layer, sample

if TYPE_CHECKING:
    from voicepipe.serve.engine.core import GenerationConfig, Prompt


def _bucket_sizes(max_batch: int) -> list[int]:
    sizes = [1]
    while sizes[-1] < max_batch:
        sizes.append(min(sizes[-1] * 2, max_batch))
    return sizes


class FrameStep:
    """Device-side generation: one frame for every active slot, as one graph replay on CUDA."""

    @property
    def _step_lock(self) -> threading.RLock:
        """Serialises frame steps, prefills and graph captures (the scheduler thread vs. an explicit `capture()`)."""
        lock = self.__dict__.get("_step_lock_")
        if lock is None:
            lock = self.__dict__.setdefault("_step_lock_", threading.RLock())
        return lock

    def _predictor(self, h: torch.Tensor, start: int, b: int) -> torch.Tensor:
        """Run the code predictor's decoder layers on h [b, n, Hp] at static positions start..start+n-1."""
        n = h.shape[1]
        cos, sin = self.pcos[start : start + n][:, None], self.psin[start : start + n][:, None]  # [n,1,hd]
        for i, w in enumerate(self.p_layers):
            pk, pv = self.pk[i], self.pv[i]

            def attend(q, k, v, pk=pk, pv=pv):
                pk[:b, :, start : start + n] = k
                pv[:b, :, start : start + n] = v
                if n > 1:
                    o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                    return o.transpose(1, 2).reshape(b, n, -1)
                o = F.scaled_dot_product_attention(
                    q.reshape(b, self.p_kvh, -1, self.p_hd), pk[:b, :, : start + 1], pv[:b, :, : start + 1])
                return o.reshape(b, 1, -1)

            h = decoder_layer(w, h, self.p_nh, self.p_kvh, self.p_hd, cos, sin, attend)
        return _rms(h, self.cp.model.norm.weight, self.cp.model.norm.variance_epsilon)

    def _step(self, b: int, L: int) -> None:
        """One frame for slots [0, b): everything on device, no host sync (graph-capturable)."""
        x = self.next_emb[:b].unsqueeze(1)
        p = self.pos[:b]
        bidx = self.slot_idx[:b]
        cos, sin = self.cos[p][:, None, None], self.sin[p][:, None, None]  # [b,1,1,hd]
        mask = (self.ar[:L][None] <= p[:, None]).view(b, 1, 1, L)
        for i, w in enumerate(self.t_layers):
            kc, vc = self.kc[i], self.vc[i]

            def attend(q, k, v, kc=kc, vc=vc):
                kc[bidx, :, p] = k[:, :, 0]
                vc[bidx, :, p] = v[:, :, 0]
                # GQA decode: fold each KV head's query heads into the query-length axis (no KV repeat)
                o = F.scaled_dot_product_attention(
                    q.reshape(b, self.kvh, -1, self.hd), kc[:b, :, :L], vc[:b, :, :L], attn_mask=mask)
                return o.reshape(b, 1, -1)

            x = decoder_layer(w, x, self.nh, self.kvh, self.hd, cos, sin, attend)
        hidden = _rms(x, self.talker.model.norm.weight, self.talker.model.norm.variance_epsilon)  # [b,1,H]
        logits = self.talker.codec_head(hidden[:, 0]).float()
        # logits processors of the package's talker generate: repetition penalty, suppressed control codes, min length
        rp = self.rep_pen[:b]
        logits = torch.where(self.seen[:b], torch.where(logits < 0, logits * rp, logits / rp), logits)
        logits = logits.masked_fill(self.suppress, float("-inf"))
        block_eos = (self.n_sampled[:b] < self.min_new[:b])
        logits[:, self.eos] = torch.where(block_eos, float("-inf"), logits[:, self.eos])
        code0 = sample(logits, self.temp[:b], self.greedy[:b], self.cfg.top_k)
        self.seen[:b].scatter_(1, code0[:, None], True)
        self.n_sampled[:b] += 1
        # code predictor: prefill [talker hidden, code-0 embedding], then 14 single steps
        e0 = self._codec_embed(code0)
        hp = self._predictor(self.cp.small_to_mtp_projection(torch.stack([hidden[:, 0], e0], 1)), 0, b)
        h_last = hp[:, -1]
        codes, embs = [code0], [e0]
        n_pred = self.n_groups - 1
        for j in range(n_pred):
            c = sample(self.cp.lm_head[j](h_last).float(), self.sub_temp[:b], self.sub_greedy[:b],
                             self.cfg.subtalker_top_k)
            e = self.cp.model.codec_embedding[j](c)
            codes.append(c)
            embs.append(e)
            if j < n_pred - 1:
                h_last = self._predictor(self.cp.small_to_mtp_projection(e[:, None]), j + 2, b)[:, 0]
        emb = torch.stack(embs, 1).sum(1)
        gs = self.gen_step[:b]
        txt = self.text_buf[bidx, gs.clamp(max=self.cfg.max_text - 1)]
        txt = torch.where((gs < self.text_len[:b])[:, None], txt, self.tts_pad[None])
        self.next_emb[:b] = emb + txt
        act = self.active[:b]
        self.gen_step[:b] += act
        self.pos[:b] = (p + act).clamp(max=self.cfg.max_len - 1)
        self.out_codes[:b] = torch.stack(codes, 1)

    def _prefill(self, slots: list[int], prompts: list[Prompt]) -> None:
        """Batched eager prefill of every prompt token but the last (which the next frame step consumes).

        Prompts are right-padded to one length: causal attention keeps each prompt to itself, and the padded K/V
        positions lie beyond the slot's position, masked out and overwritten as generation proceeds."""
        lens = [p.embeds.shape[0] - 1 for p in prompts]
        T = max(lens)
        n = len(slots)
        if T > 0:
            x = torch.zeros(n, T, self.tc.hidden_size, device=self.device, dtype=self.dtype)
            for j, p in enumerate(prompts):
                x[j, : lens[j]] = p.embeds[: lens[j]]
            sl = torch.tensor(slots, device=self.device)
            cos, sin = self.cos[:T][:, None], self.sin[:T][:, None]
            for i, w in enumerate(self.t_layers):
                kc, vc = self.kc[i], self.vc[i]

                def attend(q, k, v, kc=kc, vc=vc):
                    kc[sl, :, :T] = k
                    vc[sl, :, :T] = v
                    o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                    return o.transpose(1, 2).reshape(n, T, -1)

                x = decoder_layer(w, x, self.nh, self.kvh, self.hd, cos, sin, attend)
        for slot, p, t in zip(slots, prompts, lens, strict=True):
            self.pos[slot] = t
            self.next_emb[slot] = p.embeds[t]
            m = p.trailing.shape[0]
            self.text_buf[slot, :m] = p.trailing
            self.text_len[slot] = m
            self.gen_step[slot] = 0

    def _arm(self, slot: int, gen: GenerationConfig) -> None:
        self.seen[slot] = False
        self.n_sampled[slot] = 0
        self.min_new[slot] = gen.min_new_tokens
        self.temp[slot] = max(gen.temperature, 1e-5)
        self.greedy[slot] = not gen.do_sample
        self.sub_temp[slot] = max(gen.subtalker_temperature, 1e-5)
        self.sub_greedy[slot] = not gen.subtalker_do_sample
        self.rep_pen[slot] = gen.repetition_penalty
        self.active[slot] = 1

    # ------------------------------------------------------------------ graphs
    def _len_buckets(self) -> list[int]:
        lb, out = self.cfg.len_bucket, []
        n = lb
        while n < self.cfg.max_len:
            out.append(n)
            n *= 2
        out.append(self.cfg.max_len)
        return out

    def _pick(self, b_needed: int, l_needed: int) -> tuple[int, int]:
        b = next(s for s in _bucket_sizes(self.cfg.max_batch) if s >= b_needed)
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
        """Capture CUDA graphs for every (batch bucket, length bucket); returns seconds spent.

        Safe at any time, also while requests run (a missing bucket is captured on first use): live slots' state,
        KV caches and the RNG stream are left as they were."""
        if not self.use_graphs:
            return 0.0
        t0 = time.perf_counter()
        with self._step_lock:
            self._pool = self._pool or torch.cuda.graph_pool_handle()
            for b in batch_sizes or _bucket_sizes(self.cfg.max_batch):
                for L in lengths or self._len_buckets():
                    if (b, L) in self._graphs:
                        continue
                    s = torch.cuda.Stream()
                    s.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(s):
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
