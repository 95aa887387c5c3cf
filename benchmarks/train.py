"""Training throughput: voicepipe's recipe vs the official sft_12hz.py loop, full-size 1.7B, same data, same GPU.

    python benchmarks/train.py all --work /tmp/tb --out $OUT      # build model + corpus, run every variant, table
    python benchmarks/train.py all --small ...                    # CPU smoke test of the same code paths

Podcast scale (issue 19; the run in benchmarks/RESULTS.md, ~4 minutes of H200 after the machine starts):

    python benchmarks/train.py all --hours 20 --epochs 1 --official-epochs 1 --official-micro-batches 41 \
        --official-corpus corpus-big --max-steps 7 --warm 2 --packed-attention parity \
        --variants official,voicepipe-podcast,voicepipe-packed[,voicepipe-podcast-eager]

`--hours` also builds `corpus-big/` (same utterance-length distribution); `--official-micro-batches` and
`--max-steps` time a fixed number of steps at scale instead of whole epochs (the table says which); `parity` checks
packed against padded batches on this machine's model for each per-document attention kernel, and
`--packed-attention parity` runs the packed variants with the first kernel that agrees. The table gives seconds per
epoch of the corpus measured and per 100-hour epoch at the same rate, MFU, peak memory and the share of time the
step loop waited for data.

The model is the real `Qwen3TTSForConditionalGeneration` at the released 1.7B sizes (talker 28 x 2048, MLP 6144,
16/8 heads; code predictor 5 x 1024; speaker encoder 2048-d) with random weights, saved as a bf16 model dir and
loaded the way production loads it. The corpus is synthetic: 361 training utterances (the user's v4 corpus size) with
durations drawn around 6.5 s (1.5-20 s), random 16-codebook codes at 12.5 Hz, text of ~3.4 tokens per second, one
24 kHz reference clip. Each variant runs in its own process (clean peak-memory numbers):

- `official`: a faithful re-implementation of finetuning/sft_12hz.py's loop (bf16 weights, Accelerate bf16 + grad
  accumulation 4, batch 2, the speaker encoder run every step, its collate layout, its double-shifted losses), with
  SDPA attention since flash-attn is not installed on the device image.
- `voicepipe-v8`: `voicepipe.train.train` with configs/v8.yaml (batch 2 x accumulation 4).
- `voicepipe-fast`: configs/fast.yaml (the same 8-utterance optimizer step as one length-sorted micro-batch).
- `voicepipe-compile`: fast.yaml + `compile: true` (torch.compile of every decoder layer, dynamic shapes).

Throughput counts the same real (unpadded) tokens for every variant: talker positions + code-predictor frames.
MFU uses matmul FLOPs (6 x params per token, plus causal attention) over the GPU's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

N_TRAIN, N_VAL = 361, 19

FULL = dict(
    talker=dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                num_key_value_heads=8, head_dim=128, text_hidden_size=2048, text_vocab_size=151936, vocab_size=3072),
    cp=dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=5, num_attention_heads=16,
            num_key_value_heads=8, head_dim=128, vocab_size=2048),
    spk_channels=[512, 512, 512, 512, 1536], spk_attention=128, spk_scale=8, spk_se=128,
)  # fmt: skip
SMALL = dict(
    talker=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, text_hidden_size=64, text_vocab_size=1000, vocab_size=3072),
    cp=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, head_dim=16, vocab_size=2048),
    spk_channels=[32, 32, 32, 32, 96], spk_attention=16, spk_scale=4, spk_se=16,
)  # fmt: skip
PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12}  # dense bf16 FLOP/s


# ---------------------------------------------------------------------------------------------------------- build


def build(work: Path, small: bool, n_train: int = N_TRAIN, hours: float = 0.0) -> None:
    """A 1.7B-shaped random-weight Base model dir (bf16) + a synthetic 361-utterance corpus (`corpus/`) and, with
    `hours`, a podcast-scale one of the same utterance-length distribution (`corpus-big/`)."""
    import torch

    from voicepipe.models import apply_compat, repair_config_dict
    from voicepipe.models.tiny import (
        CODEC_IDS,
        GENERATION_CONFIG,
        LANGUAGE_IDS,
        TEXT_SPECIAL_TOKENS,
        build_text_tokenizer,
        build_tiny_codec,
    )

    apply_compat()
    from qwen_tts.core.models import Qwen3TTSConfig, Qwen3TTSForConditionalGeneration, Qwen3TTSProcessor

    sz = SMALL if small else FULL
    base = work / "base"
    base.mkdir(parents=True, exist_ok=True)
    tok = build_text_tokenizer(base)
    sp = {t: tok.convert_tokens_to_ids(t) for t in TEXT_SPECIAL_TOKENS}
    rope = {"rope_type": "default", "mrope_section": [24, 20, 20] if not small else [4, 2, 2], "interleaved": True}
    cfg = dict(
        talker_config=dict(**sz["talker"], rope_theta=1_000_000, rope_scaling=rope, max_position_embeddings=32768,
                           num_code_groups=16, codec_language_id=dict(LANGUAGE_IDS), spk_id={}, spk_is_dialect={},
                           **CODEC_IDS,
                           code_predictor_config=dict(**sz["cp"], rope_theta=1_000_000, num_code_groups=16,
                                                      max_position_embeddings=65536)),
        speaker_encoder_config=dict(mel_dim=128, enc_dim=sz["talker"]["hidden_size"], enc_channels=sz["spk_channels"],
                                    enc_kernel_sizes=[5, 3, 3, 3, 1], enc_dilations=[1, 2, 3, 4, 1],
                                    enc_attention_channels=sz["spk_attention"], enc_res2net_scale=sz["spk_scale"],
                                    enc_se_channels=sz["spk_se"], sample_rate=24000),
        tokenizer_type="qwen3_tts_tokenizer_12hz", tts_model_size="1b7", tts_model_type="base",
        im_start_token_id=sp["<|im_start|>"], im_end_token_id=sp["<|im_end|>"], tts_pad_token_id=sp["<|tts_pad|>"],
        tts_bos_token_id=sp["<|tts_bos|>"], tts_eos_token_id=sp["<|tts_eos|>"],
    )  # fmt: skip
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(dev):
        model = Qwen3TTSForConditionalGeneration(Qwen3TTSConfig(**cfg))
    model = model.to(torch.bfloat16).eval()
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(base)
    del model
    Qwen3TTSProcessor(tokenizer=tok).save_pretrained(base)
    saved = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps(repair_config_dict(saved, rope), indent=2))
    (base / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2))
    build_tiny_codec(base / "speech_tokenizer")  # only copied into exported checkpoints; not used for training

    stats = write_corpus(work / "corpus", n_train=n_train, seed=361)
    if hours:
        stats["big"] = write_corpus(work / "corpus-big", n_train=0, seed=2000, hours=hours)
    (work / "build.json").write_text(json.dumps(dict(params=n_params, **stats)))
    print(f"built: {n_params / 1e6:.1f} M params, {stats}", flush=True)


def write_corpus(corpus: Path, n_train: int, seed: int, hours: float = 0.0) -> dict:
    """Synthetic corpus: lognormal durations around 6.5 s (1.5-20 s), random codes; `hours` of audio if given."""
    import numpy as np
    import soundfile as sf

    (corpus / "clips").mkdir(parents=True, exist_ok=True)
    tt = np.arange(5 * 24000) / 24000
    ref = 0.2 * np.sin(2 * np.pi * 140 * tt) * (1 + np.sin(2 * np.pi * 3 * tt))
    sf.write(corpus / "clips" / "ref.wav", ref, 24000)
    rng = np.random.default_rng(seed)
    words = "the a voice model speaks clearly about audio data and training every single day with care".split()
    stats = dict(utterances=0, frames=0, seconds=0.0)
    for name in ("train_with_codes.jsonl", "val_with_codes.jsonl"):
        with (corpus / name).open("w") as f:
            n, secs = 0, 0.0
            while (n < n_train or secs < hours * 3600) if name.startswith("train") else n < N_VAL:
                dur = float(np.clip(rng.lognormal(math.log(6.5), 0.45), 1.5, 20.0))
                frames = max(2, round(dur * 12.5))
                text = " ".join(rng.choice(words, size=max(1, round(dur * 1.9))))
                codes = rng.integers(0, 2048, size=(frames, 16)).tolist()
                f.write(json.dumps(dict(audio="clips/ref.wav", text=text, ref_audio="clips/ref.wav",
                                        audio_codes=codes)) + "\n")  # fmt: skip
                n, secs = n + 1, secs + frames / 12.5
                if name.startswith("train"):
                    stats["utterances"], stats["frames"], stats["seconds"] = n, stats["frames"] + frames, secs
    return stats


# ------------------------------------------------------------------------------------------------- token counting


def counts(work: Path, corpus: str = "corpus") -> dict[str, float]:
    """Real tokens of one training epoch and the model FLOPs they cost (same numbers for every variant)."""
    from voicepipe.models import apply_compat
    from voicepipe.train.data import SpecialIds, build_sequence, read_split, tokenize_text

    apply_compat()
    from qwen_tts.core.models import Qwen3TTSConfig, Qwen3TTSProcessor

    cfg = Qwen3TTSConfig.from_pretrained(work / "base")
    processor = Qwen3TTSProcessor.from_pretrained(work / "base")
    t, c = cfg.talker_config, cfg.talker_config.code_predictor_config
    utts = read_split(work / corpus, "train_with_codes.jsonl", num_groups=16, codebook_size=2048, need_ref=False)
    ids = SpecialIds.from_config(cfg)
    lens, frames = [], 0
    for u in utts:
        s = build_sequence(tokenize_text(processor, u.text), u.codes, ids)
        lens.append(s.length)
        frames += s.n_frames
    h, q, kv, hd = t.hidden_size, t.num_attention_heads, t.num_key_value_heads, t.head_dim
    layer = h * q * hd * 2 + h * kv * hd * 2 + 3 * h * t.intermediate_size
    n_talker = t.num_hidden_layers * layer + h * t.vocab_size + 2 * t.text_hidden_size * h  # + codec head, text proj
    ch = c.hidden_size
    cp_layer = ch * c.num_attention_heads * c.head_dim * 2 + ch * c.num_key_value_heads * c.head_dim * 2
    cp_layer += 3 * ch * c.intermediate_size
    n_cp_pos = c.num_hidden_layers * cp_layer + h * ch  # per code-predictor position (+ projection)
    tokens = sum(lens)
    flops = 6 * n_talker * tokens + 6 * (16 * n_cp_pos + 15 * ch * c.vocab_size) * frames
    flops += sum(6 * t.num_hidden_layers * q * hd * n * n / 2 for n in lens)  # causal attention, fwd+bwd
    flops += 6 * c.num_hidden_layers * c.num_attention_heads * c.head_dim * 16 * 16 / 2 * frames
    seconds = frames / 12.5
    return dict(tokens=tokens, frames=frames, flops=flops, n_talker=n_talker, n_cp_pos=n_cp_pos, n_utts=len(lens),
                hours=seconds / 3600, flops_per_token=flops / tokens)  # fmt: skip


# ------------------------------------------------------------------------------------------------------ variants


VARIANTS = {  # name -> (config, overrides, corpus)
    "voicepipe-v8": ("v8", {}, "corpus"),
    "voicepipe-fast": ("fast", {}, "corpus"),
    "voicepipe-compile": ("fast", {"compile": True}, "corpus"),
    # the same 8-utterance optimizer steps as fast, packed: what is learned is unchanged
    "voicepipe-packed": ("fast", {"pack": True}, "corpus"),
    "voicepipe-podcast": ("podcast", {}, "corpus-big"),  # as shipped: compiled, 16,384-token rows
    "voicepipe-podcast-eager": ("podcast", {"compile": False, "micro_batch_tokens": 12288}, "corpus-big"),
}


def run_voicepipe(work: Path, variant: str, epochs: int, out: Path, max_steps: int | None, sets: dict,
                  packed_attention: str = "auto") -> dict:  # fmt: skip
    import torch

    from voicepipe.train import load_config, train

    config, extra, corpus = VARIANTS[variant]
    extra = {**extra, "packed_attention": packed_attention}
    cfg = load_config(config, epochs=epochs, export=False, save_state=False, state_every_steps=0,
                      collapse_ratio=None, divergence_factor=None, patience=epochs + 1, max_steps=max_steps,
                      val_every_steps=0, **{**extra, **sets})  # fmt: skip
    t0 = time.time()
    r = train(work / corpus, work / "base", "bench", out / f"run-{variant}", cfg, resume=False, progress=False)
    wall = time.time() - t0
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    steps = json.loads(r.training_json.read_text())["steps"]
    return dict(epoch_seconds=[e["seconds"] for e in r.epochs], wall=wall, peak_bytes=peak, corpus=corpus,
                losses=[e["train_loss"] for e in r.epochs], status=r.status, steps=steps,
                data_wait=[e.get("data_wait_s") for e in r.epochs], config=cfg.model_dump(mode="json"))  # fmt: skip


def run_official(work: Path, epochs: int, out: Path, corpus: str = "corpus", micro_batches: int = 0) -> dict:
    """finetuning/sft_12hz.py's training loop re-implemented here (same data pipeline, layout and step).

    `micro_batches` > 0: stop after that many micro-batches of the first epoch (a fixed number of steps at scale);
    each micro-batch's end time and real tokens are recorded (the recipe syncs only every 10 steps, so the times of
    individual micro-batches are host times; the whole span ends with a device sync)."""
    import librosa
    import torch
    from accelerate import Accelerator
    from qwen_tts.core.models.modeling_qwen3_tts import mel_spectrogram
    from torch.utils.data import DataLoader, Dataset

    from voicepipe.models import load_tts

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    acc = Accelerator(gradient_accumulation_steps=4, mixed_precision="bf16" if dev == "cuda" else "no",
                      cpu=dev == "cpu")  # fmt: skip
    tts = load_tts(work / "base", device=dev, dtype=torch.bfloat16 if dev == "cuda" else torch.float32)
    cfg = tts.model.config
    tc = cfg.talker_config
    rows = [json.loads(x) for x in (work / corpus / "train_with_codes.jsonl").read_text().splitlines()]

    class Data(Dataset):  # the recipe's TTSDataset: tokenize, load the reference with librosa, mel per item
        def __len__(self) -> int:
            return len(rows)

        def __getitem__(self, i: int) -> dict:
            r = rows[i]
            ids = tts.processor(text=f"<|im_start|>assistant\n{r['text']}<|im_end|>\n<|im_start|>assistant\n",
                                return_tensors="pt", padding=True)["input_ids"]  # fmt: skip
            wav, sr = librosa.load(str(work / corpus / r["ref_audio"]), sr=None, mono=True)
            mel = mel_spectrogram(torch.from_numpy(wav).unsqueeze(0), n_fft=1024, num_mels=128, sampling_rate=24000,
                                  hop_size=256, win_size=1024, fmin=0, fmax=12000).transpose(1, 2)  # fmt: skip
            return dict(text_ids=ids[:, :-5], audio_codes=torch.tensor(r["audio_codes"]), ref_mel=mel)

    real_tokens: list[int] = []  # voicepipe's sequence length of each batch's utterances (same count for all)

    def collate(batch: list[dict]) -> dict:  # the recipe's collate_fn layout (max length + 8 padding)
        lens = [b["text_ids"].shape[1] + b["audio_codes"].shape[0] for b in batch]
        real_tokens.append(sum(n + 8 for n in lens))
        b, t = len(batch), max(lens) + 8
        input_ids = torch.zeros((b, t, 2), dtype=torch.long)
        codec_ids = torch.zeros((b, t, 16), dtype=torch.long)
        tmask, cmask = torch.zeros((b, t), dtype=torch.bool), torch.zeros((b, t), dtype=torch.bool)
        codec_mask, attn = torch.zeros((b, t), dtype=torch.bool), torch.zeros((b, t), dtype=torch.long)
        labels = torch.full((b, t), -100, dtype=torch.long)
        for i, d in enumerate(batch):
            tx, codes = d["text_ids"], d["audio_codes"]
            n, f = tx.shape[1], codes.shape[0]
            input_ids[i, :3, 0] = tx[0, :3]
            input_ids[i, 3:7, 0] = cfg.tts_pad_token_id
            input_ids[i, 7, 0] = cfg.tts_bos_token_id
            input_ids[i, 8 : 8 + n - 3, 0] = tx[0, 3:]
            input_ids[i, 8 + n - 3, 0] = cfg.tts_eos_token_id
            input_ids[i, 8 + n - 2 : 8 + n + f, 0] = cfg.tts_pad_token_id
            tmask[i, : 8 + n + f] = True
            input_ids[i, 3:8, 1] = torch.tensor([tc.codec_nothink_id, tc.codec_think_bos_id, tc.codec_think_eos_id,
                                                 0, tc.codec_pad_id])  # fmt: skip
            input_ids[i, 8 : 8 + n - 2, 1] = tc.codec_pad_id
            input_ids[i, 8 + n - 2, 1] = tc.codec_bos_id
            input_ids[i, 8 + n - 1 : 8 + n - 1 + f, 1] = codes[:, 0]
            input_ids[i, 8 + n - 1 + f, 1] = tc.codec_eos_token_id
            labels[i, 8 + n - 1 : 8 + n - 1 + f] = codes[:, 0]
            labels[i, 8 + n - 1 + f] = tc.codec_eos_token_id
            codec_ids[i, 8 + n - 1 : 8 + n - 1 + f] = codes
            cmask[i, 3 : 8 + n + f] = True
            cmask[i, 6] = False
            codec_mask[i, 8 + n - 1 : 8 + n - 1 + f] = True
            attn[i, : 8 + n + f] = 1
        return dict(input_ids=input_ids, ref_mels=torch.cat([d["ref_mel"] for d in batch]), attention_mask=attn,
                    text_embedding_mask=tmask.unsqueeze(-1), codec_embedding_mask=cmask.unsqueeze(-1),
                    codec_0_labels=labels, codec_ids=codec_ids, codec_mask=codec_mask)  # fmt: skip

    loader = DataLoader(Data(), batch_size=2, shuffle=True, collate_fn=collate)
    optimizer = torch.optim.AdamW(tts.model.parameters(), lr=2e-5, weight_decay=0.01)
    model, optimizer, loader = acc.prepare(tts.model, optimizer, loader)
    model.train()
    secs, losses, marks = [], [], []
    for _epoch in range(epochs):
        if dev == "cuda":
            torch.cuda.synchronize()
        t0, tot, n = time.time(), 0.0, 0
        for step, batch in enumerate(loader):
            with acc.accumulate(model):
                spk = model.speaker_encoder(batch["ref_mels"].to(model.device).to(model.dtype)).detach()
                text_ids, codec_in = batch["input_ids"][:, :, 0], batch["input_ids"][:, :, 1]
                emb_t = model.talker.model.text_embedding(text_ids) * batch["text_embedding_mask"]
                emb_c = model.talker.model.codec_embedding(codec_in) * batch["codec_embedding_mask"]
                emb_c[:, 6, :] = spk
                emb = emb_t + emb_c
                for i in range(1, 16):
                    e = model.talker.code_predictor.get_input_embeddings()[i - 1](batch["codec_ids"][:, :, i])
                    emb = emb + e * batch["codec_mask"].unsqueeze(-1)
                outputs = model.talker(inputs_embeds=emb[:, :-1], attention_mask=batch["attention_mask"][:, :-1],
                                       labels=batch["codec_0_labels"][:, 1:], output_hidden_states=True)  # fmt: skip
                hidden = outputs.hidden_states[0][-1]
                h = hidden[batch["codec_mask"][:, :-1]]
                _, sub_loss = model.talker.forward_sub_talker_finetune(batch["codec_ids"][batch["codec_mask"]], h)
                loss = outputs.loss + 0.3 * sub_loss
                acc.backward(loss)
                if acc.sync_gradients:
                    acc.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad()
            if step % 10 == 0:  # the recipe prints (and so syncs) every 10 steps
                tot += float(loss.detach())
                n += 1
            marks.append(time.time() - t0)
            if micro_batches and step + 1 >= micro_batches:
                break
        if dev == "cuda":
            torch.cuda.synchronize()
        secs.append(time.time() - t0)
        losses.append(tot / max(n, 1))
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    if micro_batches:
        marks[-1] = secs[-1]  # the span ends with a device sync
    # the DataLoader collates ahead of the step it feeds: the first len(marks) batches are the ones trained on
    return dict(epoch_seconds=secs, peak_bytes=peak, losses=losses, status="completed", corpus=corpus,
                marks=marks, tokens=real_tokens[: len(marks)], micro_batches=micro_batches)


# ---------------------------------------------------------------------------------------------------------- driver


def gpu_peak() -> tuple[str, float]:
    import torch

    if not torch.cuda.is_available():
        return "cpu", float("nan")
    name = torch.cuda.get_device_name()
    for k in ("H100 PCIe", "H100", "H200"):
        if k in name:
            return name, PEAK_BF16[k]
    return name, float("nan")


def parity(work: Path, out: Path, n: int = 12) -> dict:
    """Packed vs right-padded on this machine's model (bf16 autocast on a GPU): loss sums and gradient agreement of
    the same `n` utterances for every packed-attention kernel that runs here."""
    import torch

    from voicepipe.models import load_tts
    from voicepipe.train.data import SpecialIds, build_sequence, collate, read_split, tokenize_text
    from voicepipe.train.loss import compute_loss
    from voicepipe.train.packing import enable_packed_attention, pack

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tts = load_tts(work / "base", device=dev, dtype=torch.float32)
    model = tts.model.train()
    utts = read_split(work / "corpus", "train_with_codes.jsonl", num_groups=16, codebook_size=2048, need_ref=False)
    ids = SpecialIds.from_config(model.config)
    seqs = [build_sequence(tokenize_text(tts.processor, u.text), u.codes, ids) for u in utts[:n]]
    spk = torch.randn(model.config.talker_config.hidden_size, device=dev)
    params = [p for p in model.talker.parameters() if p.requires_grad]

    def run(batch: object, backend: str) -> tuple[list[float], torch.Tensor]:
        model.zero_grad(set_to_none=True)
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
            p = compute_loss(model, batch.to(dev), spk, packed_backend=backend)
        loss = p.talker_sum / p.talker_count + 0.3 * p.sub_sum / p.sub_count
        loss.backward()
        g = torch.cat([q.grad.flatten().float() for q in params if q.grad is not None])
        return [float(p.talker_sum.detach()), float(p.sub_sum.detach())], g

    ref, gref = run(collate(seqs), "sdpa")
    res: dict = {"padded": dict(sums=ref)}
    enable_packed_attention(model)
    for backend in (["varlen", "flex", "sdpa"] if dev == "cuda" else ["sdpa"]):
        try:
            sums, g = run(pack(seqs, 256), backend)
            rel = float((g - gref).norm() / gref.norm())
            res[backend] = dict(sums=sums, rel_sum_diff=[abs(a - b) / abs(b) for a, b in zip(sums, ref, strict=True)],
                                grad_rel_err=rel, grad_cos=float(torch.nn.functional.cosine_similarity(g, gref, 0)))
        except Exception as e:  # report, keep going
            res[backend] = dict(error=f"{type(e).__name__}: {str(e)[:300]}")
        print(backend, json.dumps(res[backend]), flush=True)
    res["note"] = "bf16 autocast on GPU: packed and padded differ by kernel and reduction order, not by math"
    return res


def rate(v: str, res: dict, cnt: dict, warm: int) -> dict:
    """Steady-state throughput of one variant: talker tokens/s over the steps after the first `warm` (one epoch's
    steps), or over its last whole epoch when it ran several."""
    if v == "official":
        marks, toks = res["marks"], res["tokens"]
        if res.get("micro_batches"):
            w = min(warm, len(marks) - 2)
            sec, tok = marks[-1] - marks[w - 1], sum(toks[w:])
            basis = f"{len(marks) - w} micro-batches after {w} (fixed)"
        else:
            sec, tok = res["epoch_seconds"][-1], cnt["tokens"]
            basis = f"epoch {len(res['epoch_seconds'])}"
    else:
        steps = res["steps"]
        one_epoch = len({s["epoch"] for s in steps}) == 1
        if one_epoch and len(steps) > warm + 1:
            a, b = steps[warm - 1] if warm else dict(t=0.0, tokens=0, data_wait_s=0.0), steps[-1]
            sec, tok = b["t"] - a["t"], b["tokens"] - a["tokens"]
            wait = b["data_wait_s"] - a["data_wait_s"]
            basis = f"steps {warm + 1}-{len(steps)}" + (" (fixed count)" if res["config"].get("max_steps") else "")
        else:
            sec, tok = res["epoch_seconds"][-1], cnt["tokens"]
            wait = (res.get("data_wait") or [None])[-1] or float("nan")
            basis = f"epoch {len(res['epoch_seconds'])}"
        res["wait_share"] = wait / sec
    tps = tok / sec
    return dict(basis=basis, tok_per_s=tps, flops_per_s=tps * cnt["flops_per_token"], s_per_epoch=cnt["tokens"] / tps,
                s_per_100h=cnt["tokens"] / tps * 100 / cnt["hours"], wait_share=res.get("wait_share"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["all", "build", "official", "parity", *VARIANTS])
    ap.add_argument("--work", type=Path, default=Path("/tmp/train-bench"))
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/train-bench-out")))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--official-epochs", type=int, default=2)
    ap.add_argument("--official-micro-batches", type=int, default=0, help="fixed micro-batches (0 = whole epochs)")
    ap.add_argument("--official-corpus", default="corpus")
    ap.add_argument("--max-steps", type=int, default=0, help="voicepipe variants on corpus-big: fixed steps")
    ap.add_argument("--warm", type=int, default=2, help="steps (official: micro-batches) left out as warm-up")
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--n-train", type=int, default=N_TRAIN)
    ap.add_argument("--hours", type=float, default=0.0, help="also build a podcast-scale corpus of this many hours")
    ap.add_argument("--variants", default="official,voicepipe-v8,voicepipe-fast")
    ap.add_argument("--set", action="append", default=[], help="podcast variants: config key=value")
    ap.add_argument("--variant-timeout", type=float, default=3600)
    ap.add_argument("--packed-attention", default="auto", help="auto | varlen | flex | sdpa | parity (the first "
                    "kernel that passes `parity` on this machine)")  # fmt: skip
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    import yaml

    sets = {k: yaml.safe_load(v) for k, _, v in (x.partition("=") for x in a.set)}
    if a.what == "build":
        return build(a.work, a.small, a.n_train, a.hours)
    if a.what == "parity":
        if not (a.work / "build.json").exists():
            build(a.work, a.small, a.n_train, a.hours)
        res = parity(a.work, a.out)
        (a.out / "parity.json").write_text(json.dumps(res, indent=1))
        return
    if a.what == "official":
        res = run_official(a.work, a.official_epochs, a.out, a.official_corpus, a.official_micro_batches)
    elif a.what in VARIANTS:
        big = VARIANTS[a.what][2] == "corpus-big"
        res = run_voicepipe(a.work, a.what, a.epochs, a.out, (a.max_steps or None) if big else None,
                            sets if big else {}, a.packed_attention)  # fmt: skip
    if a.what != "all":
        (a.out / f"bench-{a.what}.json").write_text(json.dumps(res))
        print(json.dumps({k: v for k, v in res.items() if k not in ("steps", "marks", "tokens", "config")}),
              flush=True)  # fmt: skip
        return

    t0 = time.time()
    if not (a.work / "build.json").exists():
        build(a.work, a.small, a.n_train, a.hours)
    print(f"build {time.time() - t0:.1f}s", flush=True)
    cnts = {c: counts(a.work, c) for c in ("corpus", "corpus-big") if (a.work / c).exists()}
    print(json.dumps(cnts), flush=True)
    name, peak = gpu_peak()
    rows = []
    if a.packed_attention == "parity":  # packed vs padded on this machine's model; the first kernel that agrees
        t1 = time.time()
        p = subprocess.run([sys.executable, __file__, "parity", "--work", str(a.work), "--out", str(a.out)],
                           capture_output=True, text=True, timeout=a.variant_timeout)  # fmt: skip
        (a.out / "log-parity.txt").write_text(p.stdout[-20000:] + "\n--- stderr ---\n" + p.stderr[-20000:])
        par = json.loads((a.out / "parity.json").read_text()) if (a.out / "parity.json").exists() else {}
        ok = [b for b in ("varlen", "flex", "sdpa") if "grad_cos" in par.get(b, {}) and par[b]["grad_cos"] > 0.99
              and max(par[b]["rel_sum_diff"]) < 0.01]  # fmt: skip
        a.packed_attention = ok[0] if ok else "sdpa"
        print(f"parity ({time.time() - t1:.0f}s): {json.dumps(par)}\npacked attention: {a.packed_attention}",
              flush=True)  # fmt: skip
    for v in a.variants.split(","):
        cmd = [sys.executable, __file__, v, "--work", str(a.work), "--out", str(a.out), "--epochs", str(a.epochs),
               "--official-epochs", str(a.official_epochs), "--official-micro-batches",
               str(a.official_micro_batches), "--official-corpus", a.official_corpus, "--max-steps",
               str(a.max_steps), "--packed-attention", a.packed_attention, *[f"--set={x}" for x in a.set]]  # fmt: skip
        t1 = time.time()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.variant_timeout)
        except subprocess.TimeoutExpired as e:
            print(f"{v}: TIMED OUT after {a.variant_timeout:.0f}s", flush=True)
            (a.out / f"log-{v}.txt").write_text(str(e.stdout)[-20000:] + "\n--- stderr ---\n" + str(e.stderr)[-20000:])
            continue
        (a.out / f"log-{v}.txt").write_text(p.stdout[-20000:] + "\n--- stderr ---\n" + p.stderr[-20000:])
        if p.returncode != 0:
            print(f"{v}: FAILED rc={p.returncode}\n{p.stderr[-3000:]}", flush=True)
            continue
        res = json.loads((a.out / f"bench-{v}.json").read_text())
        corpus = res.get("corpus", "corpus")
        cnt = cnts[corpus]
        warm = a.warm if v != "official" else max(a.warm, 11)  # official: right after its sync at micro-batch 10
        r = rate(v, res, cnt, warm)
        steps = res.get("steps") or []
        rows.append(dict(variant=v, corpus=f"{cnt['n_utts']} utts, {cnt['hours']:.1f} h", **r,
                         mfu_pct=100 * r["flops_per_s"] / peak, peak_gib=res["peak_bytes"] / 2**30,
                         losses=res["losses"],
                         first_losses=[round(s_["loss"], 4) for s_ in steps[:8]], epoch_seconds=res["epoch_seconds"],
                         process_s=time.time() - t1))  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
        (a.out / "train_bench.json").write_text(json.dumps(dict(gpu=name, peak=peak, counts=cnts, rows=rows), indent=1))
    lines = [f"GPU: {name} (dense bf16 peak {peak / 1e12:.0f} TFLOP/s). "
             + "; ".join(f"{c}: {x['n_utts']} utts, {x['hours']:.2f} h, {x['tokens']} talker tokens + {x['frames']} "
                         f"frames, {x['flops'] / 1e15:.2f} PFLOP per epoch" for c, x in cnts.items()), "",
             "| variant | corpus | measured over | s/epoch | s per 100 h | tokens/s | MFU | peak GiB | data wait |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        wait = f"{100 * r['wait_share']:.1f}%" if r.get("wait_share") is not None else "-"
        lines.append(f"| {r['variant']} | {r['corpus']} | {r['basis']} | {r['s_per_epoch']:.1f} | "
                     f"{r['s_per_100h']:.0f} | {r['tok_per_s']:.0f} | {r['mfu_pct']:.1f}% | {r['peak_gib']:.1f} | "
                     f"{wait} |")  # fmt: skip
    table = "\n".join(lines)
    print(table, flush=True)
    (a.out / "train_bench.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
