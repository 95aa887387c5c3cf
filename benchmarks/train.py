"""Training throughput: voicepipe's recipe vs the official sft_12hz.py loop, full-size 1.7B, same data, same GPU.

    python benchmarks/train.py all --work /tmp/tb --out $OUT      # build model + corpus, run every variant, table
    python benchmarks/train.py all --small ...                    # CPU smoke test of the same code paths

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


def build(work: Path, small: bool, n_train: int = N_TRAIN) -> None:
    """A 1.7B-shaped random-weight Base model dir (bf16) + a synthetic 361-utterance corpus."""
    import numpy as np
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

    corpus = work / "corpus"
    (corpus / "clips").mkdir(parents=True, exist_ok=True)
    import soundfile as sf

    tt = np.arange(5 * 24000) / 24000
    ref = 0.2 * np.sin(2 * np.pi * 140 * tt) * (1 + np.sin(2 * np.pi * 3 * tt))
    sf.write(corpus / "clips" / "ref.wav", ref, 24000)
    rng = np.random.default_rng(361)
    words = "the a voice model speaks clearly about audio data and training every single day with care".split()
    stats = dict(frames=0, text_tokens=0)
    for name, n in (("train_with_codes.jsonl", n_train), ("val_with_codes.jsonl", N_VAL)):
        rows = []
        for _ in range(n):
            dur = float(np.clip(rng.lognormal(math.log(6.5), 0.45), 1.5, 20.0))
            frames = max(2, round(dur * 12.5))
            text = " ".join(rng.choice(words, size=max(1, round(dur * 1.9))))
            codes = rng.integers(0, 2048, size=(frames, 16)).tolist()
            rows.append(dict(audio="clips/ref.wav", text=text, ref_audio="clips/ref.wav", audio_codes=codes))
            if name.startswith("train"):
                stats["frames"] += frames
                stats["text_tokens"] += len(tok(text)["input_ids"])
        (corpus / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (work / "build.json").write_text(json.dumps(dict(params=n_params, **stats)))
    print(f"built: {n_params / 1e6:.1f} M params, {stats}", flush=True)


# ------------------------------------------------------------------------------------------------- token counting


def counts(work: Path) -> dict[str, float]:
    """Real tokens of one training epoch and the model FLOPs they cost (same numbers for every variant)."""
    from voicepipe.models import apply_compat
    from voicepipe.train.data import SpecialIds, build_sequence, read_split, tokenize_text

    apply_compat()
    from qwen_tts.core.models import Qwen3TTSConfig, Qwen3TTSProcessor

    cfg = Qwen3TTSConfig.from_pretrained(work / "base")
    processor = Qwen3TTSProcessor.from_pretrained(work / "base")
    t, c = cfg.talker_config, cfg.talker_config.code_predictor_config
    utts = read_split(work / "corpus", "train_with_codes.jsonl", num_groups=16, codebook_size=2048, need_ref=False)
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
    return dict(tokens=tokens, frames=frames, flops=flops, n_talker=n_talker, n_cp_pos=n_cp_pos)


# ------------------------------------------------------------------------------------------------------ variants


def run_voicepipe(work: Path, config: str, epochs: int, out: Path) -> dict:
    import torch

    from voicepipe.train import load_config, train

    extra = {"compile": True} if config == "compile" else {}
    cfg = load_config("fast" if config == "compile" else config, epochs=epochs, export=False, save_state=False,
                      collapse_ratio=None, divergence_factor=None, patience=epochs + 1, **extra)  # fmt: skip
    t0 = time.time()
    r = train(work / "corpus", work / "base", "bench", out / f"run-{config}", cfg, resume=False, progress=False)
    wall = time.time() - t0
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    return dict(epoch_seconds=[e["seconds"] for e in r.epochs], wall=wall, peak_bytes=peak,
                losses=[e["train_loss"] for e in r.epochs], status=r.status)  # fmt: skip


def run_official(work: Path, epochs: int, out: Path) -> dict:
    """finetuning/sft_12hz.py's training loop re-implemented here (same data pipeline, layout and step)."""
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
    rows = [json.loads(x) for x in (work / "corpus" / "train_with_codes.jsonl").read_text().splitlines()]

    class Data(Dataset):  # the recipe's TTSDataset: tokenize, load the reference with librosa, mel per item
        def __len__(self) -> int:
            return len(rows)

        def __getitem__(self, i: int) -> dict:
            r = rows[i]
            ids = tts.processor(text=f"<|im_start|>assistant\n{r['text']}<|im_end|>\n<|im_start|>assistant\n",
                                return_tensors="pt", padding=True)["input_ids"]  # fmt: skip
            wav, sr = librosa.load(str(work / "corpus" / r["ref_audio"]), sr=None, mono=True)
            mel = mel_spectrogram(torch.from_numpy(wav).unsqueeze(0), n_fft=1024, num_mels=128, sampling_rate=24000,
                                  hop_size=256, win_size=1024, fmin=0, fmax=12000).transpose(1, 2)  # fmt: skip
            return dict(text_ids=ids[:, :-5], audio_codes=torch.tensor(r["audio_codes"]), ref_mel=mel)

    def collate(batch: list[dict]) -> dict:  # the recipe's collate_fn layout (max length + 8 padding)
        lens = [b["text_ids"].shape[1] + b["audio_codes"].shape[0] for b in batch]
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
    secs, losses = [], []
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
        if dev == "cuda":
            torch.cuda.synchronize()
        secs.append(time.time() - t0)
        losses.append(tot / max(n, 1))
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    return dict(epoch_seconds=secs, peak_bytes=peak, losses=losses, status="completed")


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["all", "build", "official", "voicepipe-v8", "voicepipe-fast", "voicepipe-compile"])
    ap.add_argument("--work", type=Path, default=Path("/tmp/train-bench"))
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/train-bench-out")))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--official-epochs", type=int, default=2)
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--n-train", type=int, default=N_TRAIN)
    ap.add_argument("--variants", default="official,voicepipe-v8,voicepipe-fast")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    if a.what == "build":
        return build(a.work, a.small, a.n_train)
    if a.what == "official":
        res = run_official(a.work, a.official_epochs, a.out)
    elif a.what.startswith("voicepipe"):
        res = run_voicepipe(a.work, a.what.split("-")[1], a.epochs, a.out)
    if a.what != "all":
        (a.out / f"bench-{a.what}.json").write_text(json.dumps(res))
        print(json.dumps(res), flush=True)
        return

    t0 = time.time()
    if not (a.work / "build.json").exists():
        build(a.work, a.small, a.n_train)
    print(f"build {time.time() - t0:.1f}s", flush=True)
    cnt = counts(a.work)
    name, peak = gpu_peak()
    rows = []
    for v in a.variants.split(","):
        cmd = [sys.executable, __file__, v, "--work", str(a.work), "--out", str(a.out), "--epochs", str(a.epochs),
               "--official-epochs", str(a.official_epochs)]  # fmt: skip
        t1 = time.time()
        p = subprocess.run(cmd, capture_output=True, text=True)
        (a.out / f"log-{v}.txt").write_text(p.stdout[-20000:] + "\n--- stderr ---\n" + p.stderr[-20000:])
        if p.returncode != 0:
            print(f"{v}: FAILED rc={p.returncode}\n{p.stderr[-3000:]}", flush=True)
            continue
        res = json.loads((a.out / f"bench-{v}.json").read_text())
        steady = res["epoch_seconds"][1:] or res["epoch_seconds"]  # first epoch = warm-up
        sec = sorted(steady)[len(steady) // 2]
        rows.append(dict(variant=v, s_per_epoch=sec, first_epoch_s=res["epoch_seconds"][0],
                         tok_per_s=(cnt["tokens"] + cnt["frames"]) / sec, talker_tok_per_s=cnt["tokens"] / sec,
                         mfu=cnt["flops"] / sec / peak, peak_gib=res["peak_bytes"] / 2**30, losses=res["losses"],
                         process_s=time.time() - t1))  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    base = next((r for r in rows if r["variant"] == "official"), None)
    lines = [f"GPU: {name} (dense bf16 peak {peak / 1e12:.0f} TFLOP/s); corpus {a.n_train} utts, "
             f"{cnt['tokens']} talker tokens + {cnt['frames']} frames per epoch; model FLOPs/epoch "
             f"{cnt['flops'] / 1e15:.3f} PFLOP", "",
             "| variant | s/epoch | tokens/s | MFU | peak GiB | vs official |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        speed = f"{base['s_per_epoch'] / r['s_per_epoch']:.2f}x" if base else "-"
        lines.append(f"| {r['variant']} | {r['s_per_epoch']:.2f} | {r['tok_per_s']:.0f} | {100 * r['mfu']:.1f}% | "
                     f"{r['peak_gib']:.1f} | {speed} |")  # fmt: skip
    table = "\n".join(lines)
    print(table, flush=True)
    (a.out / "train_bench.md").write_text(table + "\n")
    (a.out / "train_bench.json").write_text(json.dumps(dict(gpu=name, peak=peak, counts=cnt, rows=rows), indent=1))


if __name__ == "__main__":
    main()
