"""The fine-tuning loss, aligned the way generation runs (each shift happens exactly once).

Talker (codebook 0): the output at position p predicts the codebook-0 token that sits at position p+1, so the
logits at positions [0, T-1) are scored against labels at [1, T). This is transformers' causal-LM convention applied
once to UNSHIFTED labels (the official sft_12hz.py shifts the labels itself and then the model's loss shifts again).

Code predictor (codebooks 1..15): at generation time, frame t's residual codes are predicted from the talker hidden
state that produced frame t's codebook-0 token, i.e. the hidden state of the PREVIOUS position, followed by the
embeddings of codebooks 0..14 of frame t. `code_predictor.forward_finetune` returns logits[:, k] for codebook k+1,
which are scored against codebook k+1 directly (no extra shift; `forward_sub_talker_finetune` shifts again).

Text goes through `talker.text_projection`, as in `generate`. Losses are returned as SUMS with their counts so the
trainer can normalise over a whole optimizer step (gradient independent of micro-batching and of the process count).
No host-device synchronisation happens here: counts come from the CPU-side batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from voicepipe.train.data import IGNORE, Batch


@dataclass
class LossParts:
    talker_sum: torch.Tensor  # sum of codebook-0 cross-entropies
    talker_count: int
    sub_sum: torch.Tensor  # sum of codebook-1..15 cross-entropies
    sub_count: int
    talker_correct: torch.Tensor  # teacher-forced argmax hits (codebook 0)
    sub_correct: torch.Tensor

    def loss(self, subtalker_weight: float, talker_norm: float, sub_norm: float) -> torch.Tensor:
        """Total loss with explicit normalisers (counts over the whole optimizer step)."""
        return self.talker_sum / max(talker_norm, 1.0) + subtalker_weight * self.sub_sum / max(sub_norm, 1.0)


def input_embeddings(model: torch.nn.Module, batch: Batch, speaker_embedding: torch.Tensor) -> torch.Tensor:
    """The talker's input: projected text + codec codebook 0 + speaker vector at its slot + codebooks 1..15."""
    talker = model.talker
    text = talker.text_projection(talker.get_text_embeddings()(batch.text_ids)) * batch.text_mask.unsqueeze(-1)
    codec = talker.get_input_embeddings()(batch.codec_ids[..., 0]) * batch.codec_mask.unsqueeze(-1)
    slot = batch.speaker_mask.unsqueeze(-1)
    codec = torch.where(slot, speaker_embedding.to(codec.dtype).view(1, 1, -1), codec)
    emb = text + codec
    frames = batch.frame_mask.unsqueeze(-1)
    residual = talker.code_predictor.get_input_embeddings()
    for i in range(1, batch.codec_ids.shape[-1]):
        emb = emb + residual[i - 1](batch.codec_ids[..., i]) * frames
    return emb


def compute_loss(model: torch.nn.Module, batch: Batch, speaker_embedding: torch.Tensor,
                 packed_backend: str = "sdpa", frame_floor: int = 0) -> LossParts:  # fmt: skip
    """Forward one micro-batch through talker and code predictor; return summed losses and counts.

    `batch` is a right-padded `Batch` or a `packing.PackedBatch` (then `packed_backend` picks the per-document
    attention kernel). `frame_floor`: a micro-batch with fewer frames runs the code predictor on that many, the
    extra ones ignored by the loss (a compiled predictor then never sees the few-frame shapes that recompile it)."""
    talker = model.talker
    emb = input_embeddings(model, batch, speaker_embedding)
    if hasattr(batch, "doc_ids"):
        from voicepipe.train.packing import packed_talker

        logits, hidden = packed_talker(model, emb, batch, packed_backend)
    else:
        # Right padding + causal attention: real tokens never see padding, so no attention mask is needed
        # (and SDPA can take its fused causal path). Positions are then 0..T-1 for every row, as in generate().
        out = talker(inputs_embeds=emb, use_cache=False, output_hidden_states=True)
        logits = out.logits  # (B, T, V)
        hidden = out.hidden_states[0][-1]  # last layer after the final norm, (B, T, H)

    # codebook 0: output at p predicts labels[p+1]
    lg = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    t0 = batch.labels[:, 1:].reshape(-1)
    talker_sum = F.cross_entropy(lg, t0, ignore_index=IGNORE, reduction="sum")
    talker_correct = ((lg.argmax(-1) == t0) & (t0 != IGNORE)).sum()

    # codebooks 1..15 of the frame at q, from the talker hidden state at q-1
    idx = batch.frame_idx
    pad = max(0, frame_floor - idx.numel())
    if pad:  # frame 0 again, its targets ignored below
        idx = F.pad(idx, (0, pad))
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1]).index_select(0, idx)  # (N, H)
    codes = batch.codec_ids[:, 1:].reshape(-1, batch.codec_ids.shape[-1]).index_select(0, idx)  # (N, G)
    groups = codes.shape[1]
    cp = talker.code_predictor
    parts = [h.unsqueeze(1), talker.get_input_embeddings()(codes[:, :1])]
    parts += [cp.get_input_embeddings()[i - 1](codes[:, i : i + 1]) for i in range(1, groups - 1)]
    sub_out = cp.forward_finetune(inputs_embeds=torch.cat(parts, dim=1), use_cache=False)
    sub_logits = sub_out.logits.float()  # (N, G-1, V'): [:, k] predicts codebook k+1
    sub_t = codes[:, 1:]
    if pad:
        sub_t = sub_t.clone()
        sub_t[-pad:] = IGNORE
    sub_sum = F.cross_entropy(sub_logits.reshape(-1, sub_logits.shape[-1]), sub_t.reshape(-1), ignore_index=IGNORE,
                              reduction="sum")
    sub_correct = (sub_logits.argmax(-1) == sub_t).sum()  # IGNORE (-100) is never an argmax
    return LossParts(
        talker_sum=talker_sum,
        talker_count=batch.n_labels,
        sub_sum=sub_sum,
        sub_count=batch.n_frames * (groups - 1),
        talker_correct=talker_correct,
        sub_correct=sub_correct,
    )
