"""Packed micro-batches: several utterances end to end in one row, each attending only to itself.

Why: a 1.7B step is host-bound at v8's sizes (~25,600 ATen ops per micro-batch whatever its size; benchmarks/
RESULTS.md), so speed comes from putting more real tokens into each micro-batch, without padding. A packed
micro-batch is ONE row of `T` tokens (1, T): the utterances' sequences laid out exactly as `data.build_sequence` lays
them out, one after the other, then padding up to a multiple of `multiple` (few distinct shapes for compiled code).
Per utterance ("document"):

- positions restart at 0 (the talker's MRoPE sees what it sees for an unpacked utterance, and what `generate` sees);
- attention is causal inside the document and never crosses it (`DocMask`: flash-attention varlen on CUDA, a
  FlexAttention block mask, or a dense SDPA mask on CPU / as the reference);
- every document starts with role tokens whose label is IGNORE, so the talker output at the last token of one
  document is never scored against the next document.

So a packed micro-batch computes the same per-token losses as the same utterances right-padded (tested:
tests/test_train_packing.py), and the trainer's step loss is still a token mean over the whole optimizer step.

`plan_packed_epoch` is the token-budget planner: optimizer steps of `step_tokens` real tokens (all processes together),
each split into micro-batches of at most `micro_batch_tokens` by first-fit-decreasing bin packing.
"""

from __future__ import annotations

import contextlib
import functools
import math
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from voicepipe.errors import InputError
from voicepipe.train.data import IGNORE, Sequence

ATTN_NAME = "voicepipe_packed"
Backend = Literal["auto", "varlen", "flex", "sdpa"]


@dataclass
class PackedBatch:
    """One packed row (batch dim 1). Field names match `data.Batch` where they mean the same thing."""

    text_ids: torch.Tensor  # (1, T)
    text_mask: torch.Tensor
    codec_ids: torch.Tensor  # (1, T, G)
    codec_mask: torch.Tensor
    frame_mask: torch.Tensor
    labels: torch.Tensor
    speaker_mask: torch.Tensor  # (1, T) bool: each document's speaker slot (data.Sequence.speaker_mask)
    position_ids: torch.Tensor  # (1, T): restarts at 0 for every document (padding: 0..)
    doc_ids: torch.Tensor  # (1, T): document index; padding has its own index (the last)
    cu_seqlens: torch.Tensor  # (n_docs + 1 [+1 for padding],) int32 boundaries
    frame_idx: torch.Tensor  # flat indices into (1, T-1) of positions q-1 whose successor q is a frame
    max_seqlen: int  # longest segment (host int: flash varlen needs it, and reading it on the GPU would sync)
    n_labels: int
    n_frames: int
    n_docs: int
    n_tokens: int  # real (unpadded) tokens

    def to(self, device: torch.device | str) -> PackedBatch:
        return PackedBatch(
            **{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in self.__dict__.items()}
        )

    def pin_memory(self) -> PackedBatch:
        return PackedBatch(**{k: (v.pin_memory() if torch.is_tensor(v) else v) for k, v in self.__dict__.items()})


def pack(seqs: list[Sequence], multiple: int = 1) -> PackedBatch:
    """Lay `seqs` end to end in one row, padded to a multiple of `multiple` tokens."""
    if not seqs:
        raise ValueError("pack: no sequences")
    n = sum(s.length for s in seqs)
    t = max(n, math.ceil(n / multiple) * multiple)
    g = seqs[0].codec_ids.shape[1]
    text_ids = torch.zeros(t, dtype=torch.long)
    text_mask = torch.zeros(t, dtype=torch.bool)
    codec_ids = torch.zeros((t, g), dtype=torch.long)
    codec_mask = torch.zeros(t, dtype=torch.bool)
    frame_mask = torch.zeros(t, dtype=torch.bool)
    labels = torch.full((t,), IGNORE, dtype=torch.long)
    speaker_mask = torch.zeros(t, dtype=torch.bool)
    position_ids = torch.zeros(t, dtype=torch.long)
    doc_ids = torch.full((t,), len(seqs), dtype=torch.long)
    bounds, o = [0], 0
    for d, s in enumerate(seqs):
        k = s.length
        sl = slice(o, o + k)
        text_ids[sl], text_mask[sl], codec_ids[sl] = s.text_ids, s.text_mask, s.codec_ids
        codec_mask[sl], frame_mask[sl], labels[sl] = s.codec_mask, s.frame_mask, s.labels
        speaker_mask[sl] = s.speaker_mask
        position_ids[sl] = torch.arange(k)
        doc_ids[sl] = d
        o += k
        bounds.append(o)
    if t > n:
        position_ids[n:] = torch.arange(t - n)
        bounds.append(t)
    seg = [b - a for a, b in zip(bounds, bounds[1:], strict=False)]
    return PackedBatch(
        text_ids=text_ids[None], text_mask=text_mask[None], codec_ids=codec_ids[None], codec_mask=codec_mask[None],
        frame_mask=frame_mask[None], labels=labels[None], speaker_mask=speaker_mask[None],
        position_ids=position_ids[None], doc_ids=doc_ids[None],
        cu_seqlens=torch.tensor(bounds, dtype=torch.int32), frame_idx=frame_mask[1:].nonzero().squeeze(-1),
        max_seqlen=max(seg), n_labels=int((labels != IGNORE).sum()), n_frames=int(frame_mask.sum()),
        n_docs=len(seqs), n_tokens=n,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# the token-budget plan


def _ffd(items: list[int], lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: bins of total length <= capacity (an item longer than capacity gets its own bin)."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(items, key=lambda j: (-lengths[j], j)):
        for b, r in enumerate(room):
            if lengths[i] <= r:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


def plan_packed_epoch(
    lengths: list[int],
    *,
    epoch: int,
    seed: int,
    world: int,
    micro_batch_tokens: int,
    step_tokens: int | None = None,
    per_step: int | None = None,
    shuffle: bool = True,
) -> list[list[list[list[int]]]]:
    """Deterministic plan, same shape as `data.plan_epoch`: steps[s][rank] = micro-batches (utterance indices).

    Steps hold `step_tokens` real tokens over all processes (token budget; a step closes before the utterance that
    would overflow it), or, when `step_tokens` is None, `per_step * world` utterances in the same shuffled order as
    `data.plan_epoch` (so a packed run sees exactly the unpacked run's optimizer steps). A step's utterances go to the
    processes longest-first onto the least-loaded one, and each process packs its share into micro-batches of at most
    `micro_batch_tokens` (first-fit decreasing).
    """
    if (step_tokens is None) == (per_step is None):
        raise ValueError("plan_packed_epoch: give exactly one of step_tokens, per_step")
    n = len(lengths)
    if shuffle:
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = torch.randperm(n, generator=g).tolist()
    else:
        order = list(range(n))
    chunks: list[list[int]] = []
    if per_step is not None:
        k = per_step * world
        chunks = [order[s : s + k] for s in range(0, n, k)]
    else:
        cur: list[int] = []
        tok = 0
        for i in order:
            if cur and tok + lengths[i] > step_tokens:
                chunks.append(cur)
                cur, tok = [], 0
            cur.append(i)
            tok += lengths[i]
        if cur:
            chunks.append(cur)
    steps = []
    for chunk in chunks:
        share: list[list[int]] = [[] for _ in range(world)]
        load = [0] * world
        for i in sorted(chunk, key=lambda j: (-lengths[j], j)):
            r = min(range(world), key=lambda q: (load[q], q))
            share[r].append(i)
            load[r] += lengths[i]
        steps.append([_ffd(mine, lengths, micro_batch_tokens) for mine in share])
    return steps


# ----------------------------------------------------------------------------------------------------------------
# per-document attention


@dataclass
class DocMask:
    """What the packed attention needs (passed to each decoder layer as its `attention_mask`)."""

    cu_seqlens: torch.Tensor
    max_seqlen: int
    doc_ids: torch.Tensor  # (1, T)
    backend: str
    block_mask: Any = None  # FlexAttention BlockMask, built once per micro-batch
    dense: torch.Tensor | None = None  # (1, 1, T, T) bool, built once per micro-batch


def resolve_backend(backend: Backend, device: torch.device) -> str:
    """'auto': flash-attention varlen on CUDA where torch has it, else FlexAttention; dense SDPA on CPU."""
    if backend != "auto":
        return backend
    if device.type != "cuda":
        return "sdpa"
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401

        return "varlen"
    except ImportError:
        return "flex"


def doc_mask(batch: PackedBatch, backend: str) -> DocMask:
    m = DocMask(cu_seqlens=batch.cu_seqlens, max_seqlen=batch.max_seqlen, doc_ids=batch.doc_ids, backend=backend)
    doc = batch.doc_ids[0]
    t = doc.shape[0]
    if backend == "flex":
        from torch.nn.attention.flex_attention import create_block_mask

        def same_doc_causal(b: Any, h: Any, q: Any, kv: Any) -> Any:
            return (doc[q] == doc[kv]) & (q >= kv)

        m.block_mask = create_block_mask(same_doc_causal, 1, None, t, t, device=doc.device)
    elif backend == "sdpa":
        causal = torch.ones(t, t, dtype=torch.bool, device=doc.device).tril()
        m.dense = ((doc[:, None] == doc[None, :]) & causal)[None, None]
    return m


_FLEX: Any = None


@torch.compiler.disable
def _packed_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: Any, dropout: float = 0.0, scaling: float | None = None,
                      **kwargs: Any) -> tuple[torch.Tensor, None]:  # fmt: skip
    """transformers attention-interface function: per-document causal attention for a `DocMask`; any other mask
    (generation, unpacked batches) goes to the implementation the model was loaded with."""
    if not isinstance(attention_mask, DocMask):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        name = _ORIGINAL.get(id(module.config), "sdpa")
        if name == "eager":
            raise RuntimeError("packed attention fallback: eager is not supported; load with sdpa")
        return ALL_ATTENTION_FUNCTIONS[name](module, query, key, value, attention_mask, dropout=dropout,
                                             scaling=scaling, **kwargs)  # fmt: skip
    m = attention_mask
    hq, hkv = query.shape[1], key.shape[1]
    if m.backend in ("varlen", "flex"):
        # These kernels are not autocast-aware, and the talker's q/k leave their fp32-weighted RMSNorm in fp32
        # while v is bf16 under autocast: give all three the autocast dtype, as autocast does for SDPA.
        dev = query.device.type
        dt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else value.dtype
        query, key, value = query.to(dt), key.to(dt), value.to(dt)
    if m.backend == "varlen":
        from torch.nn.attention.varlen import varlen_attn

        q = query[0].transpose(0, 1)  # (T, H, D)
        k = key[0].transpose(0, 1)
        v = value[0].transpose(0, 1)
        if hkv != hq:  # repeat_kv's layout: query head h reads kv head h // (hq // hkv)
            k = k[:, :, None].expand(-1, -1, hq // hkv, -1).reshape(k.shape[0], hq, k.shape[-1])
            v = v[:, :, None].expand(-1, -1, hq // hkv, -1).reshape(v.shape[0], hq, v.shape[-1])
        kw = dict(_VARLEN_CAUSAL())
        if kw.pop("_scale"):
            kw["scale"] = scaling
        elif scaling is not None and abs(scaling - q.shape[-1] ** -0.5) > 1e-9:
            raise RuntimeError("this torch's varlen_attn has no scale argument; use packed_attention: flex")
        out = varlen_attn(q.contiguous(), k.contiguous(), v.contiguous(), m.cu_seqlens, m.cu_seqlens, m.max_seqlen,
                          m.max_seqlen, **kw)  # fmt: skip
        return out[None], None  # (1, T, H, D)
    if m.backend == "flex":
        global _FLEX
        if _FLEX is None:
            from torch.nn.attention.flex_attention import flex_attention

            _FLEX = torch.compile(flex_attention) if query.is_cuda else flex_attention
        out = _FLEX(query, key, value, block_mask=m.block_mask, scale=scaling, enable_gqa=hkv != hq)
        return out.transpose(1, 2).contiguous(), None
    if m.backend == "sdpa":
        if hkv != hq:
            key = key.repeat_interleave(hq // hkv, dim=1)
            value = value.repeat_interleave(hq // hkv, dim=1)
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=m.dense, scale=scaling)
        return out.transpose(1, 2).contiguous(), None
    raise ValueError(f"packed attention backend {m.backend!r}: expected varlen, flex or sdpa")


@functools.cache
def _VARLEN_CAUSAL() -> dict[str, Any]:  # noqa: N802
    """Causal flag for `varlen_attn`, whose keyword changed across torch versions (is_causal / window_size)."""
    import inspect

    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    kw: dict[str, Any] = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}
    return {**kw, "_scale": "scale" in params}


_ORIGINAL: dict[int, str] = {}


def enable_packed_attention(model: torch.nn.Module) -> None:
    """Route the talker's attention through `_packed_attention` (other masks still use the loaded implementation)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, _packed_attention)
    cfg = model.talker.config
    if cfg._attn_implementation != ATTN_NAME:
        _ORIGINAL[id(cfg)] = cfg._attn_implementation or "sdpa"
        cfg._attn_implementation_internal = ATTN_NAME  # this config only (not the code predictor's)


def disable_packed_attention(model: torch.nn.Module) -> None:
    cfg = model.talker.config
    if id(cfg) in _ORIGINAL:
        cfg._attn_implementation_internal = _ORIGINAL.pop(id(cfg))


# ----------------------------------------------------------------------------------------------------------------
# forward


def packed_talker(model: torch.nn.Module, emb: torch.Tensor, batch: PackedBatch,
                  backend: str) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The talker's decoder on a packed row: (logits (1, T, V), last hidden state after the final norm (1, T, H)).

    The same modules and order as `Qwen3TTSTalkerModel.forward` with no cache; positions restart per document (all
    three MRoPE sections equal, as `generate` gives text-only prompts) and the mask is a `DocMask`.
    """
    talker = model.talker
    inner = talker.model
    if talker.config._attn_implementation != ATTN_NAME:
        raise RuntimeError("packed batches need enable_packed_attention(model) first")
    pos = batch.position_ids
    pe = inner.rotary_emb(emb, pos[None].expand(3, -1, -1))
    mask = doc_mask(batch, backend)
    h = emb
    for layer in inner.layers:
        out = layer(h, attention_mask=mask, position_ids=pos, past_key_values=None, use_cache=False,
                    cache_position=None, position_embeddings=pe)  # fmt: skip
        h = out[0] if isinstance(out, tuple) else out
    h = inner.norm(h)
    return talker.codec_head(h), h


def check_fits(lengths: list[int], micro_batch_tokens: int) -> None:
    """InputError when an utterance is longer than a packed micro-batch may be."""
    longest = max(lengths)
    if longest > micro_batch_tokens:
        raise InputError(
            f"micro_batch_tokens {micro_batch_tokens}: shorter than the longest utterance ({longest} tokens); raise it"
        )


# ----------------------------------------------------------------------------------------------------------------
# prefetch


class Prefetcher:
    """Items of `items` produced `depth` ahead by a daemon thread (collate + pin while the GPU computes).

    `wait_s` is the time `next()` spent blocked: the data loader's stall of the training loop (with `depth` 0 the
    items are made inline and all of their making is stall). Errors in the thread surface at `next()`.
    """

    _END = object()

    def __init__(self, items: Iterable[Any], depth: int = 2) -> None:
        self.wait_s = 0.0
        self._it = iter(items)
        self._depth = depth
        self._stop = threading.Event()
        if depth > 0:
            self._q: queue.Queue[Any] = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._run, daemon=True, name="voicepipe-prefetch")
            self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._it:
                while not self._stop.is_set():
                    try:
                        self._q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._q.put(self._END)
        except BaseException as e:  # handed to the consumer
            self._q.put(e)

    def next(self) -> Any:
        t = time.perf_counter()
        try:
            if self._depth == 0:
                return next(self._it)
            item = self._q.get()
            if item is self._END:
                raise StopIteration
            if isinstance(item, BaseException):
                raise item
            return item
        finally:
            self.wait_s += time.perf_counter() - t

    def close(self) -> None:
        self._stop.set()
        if self._depth > 0:
            while self._thread.is_alive():
                with contextlib.suppress(queue.Empty):
                    self._q.get(timeout=0.05)
