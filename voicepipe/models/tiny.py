"""Tiny random-weight instances of the REAL model classes, saved in the official on-disk layouts.

Tests and the demo use these instead of the multi-GB releases: same classes, same files, same loaders.
- `build_tiny_tts`: Qwen3-TTS-12Hz base (talker + code predictor + ECAPA speaker encoder, byte-level BPE text
  tokenizer, `speech_tokenizer/` = the 12 Hz codec with its Mimi encoder); shapes that matter are the real ones
  (16 codebooks of 2048 codes, codec vocab 3072 with speaker slot 3000, 24 kHz, 1920 samples per 12.5 Hz frame).
- `build_tiny_custom_voice`: that base saved through `save_tts_checkpoint` with a speaker in row 3000.
- `build_tiny_codec`, `build_tiny_demucs` (HTDemucs), `build_tiny_whisper`, `build_tiny_diarization` (pyannote 4),
  `build_tiny_wavlm_sv` (WavLMForXVector), `build_tiny_wespeaker` (pyannote WeSpeakerResNet34).
Only widths and depths are small; outputs are junk but have the real types, shapes and rates. The corpus-model
builders also take `full_size=True`: the released shapes with random weights, for GPU speed benchmarks.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voicepipe.models import compat, others, qwen
from voicepipe.models.compat import apply_compat


def _source_hash() -> str:
    # hashed when this module is imported, i.e. of the code that will run (a hash taken later could describe a newer
    # file on disk than the code loaded in this process, and mislabel a cached build)
    h = hashlib.sha256()
    for module in (compat, others, qwen):
        h.update(Path(module.__file__).read_bytes())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:16]


BUILD_ID = _source_hash()  # identifies what the builders here produce; the test fixtures cache builds by it

SAMPLE_RATE = 24000
FRAME_SAMPLES = 1920

# Special ids as in the released Qwen3-TTS-12Hz configs (codec side; the real text ids are in the 151k range, the
# tiny text tokenizer puts its special tokens right after its BPE vocabulary instead).
CODEC_IDS = dict(
    codec_pad_id=2148,
    codec_bos_id=2149,
    codec_eos_token_id=2150,
    codec_think_id=2154,
    codec_nothink_id=2155,
    codec_think_bos_id=2156,
    codec_think_eos_id=2157,
)
LANGUAGE_IDS = {"english": 2050, "german": 2052, "spanish": 2054, "chinese": 2055, "japanese": 2058, "french": 2061}
TEXT_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|tts_pad|>", "<|tts_bos|>", "<|tts_eos|>"]

_TOKENIZER_CORPUS = (
    "assistant user system\n"
    "The quick brown fox jumps over the lazy dog. Hello, this is a test of the voice pipeline.\n"
    "She said she would be here by noon. We record podcasts about solar power, batteries and inverters.\n"
    "One two three four five six seven eight nine ten. Thank you for listening, see you next week!\n"
)


def build_text_tokenizer(out_dir: str | Path, vocab_size: int = 400) -> Any:
    """Train a tiny byte-level BPE and save it as transformers 5's `Qwen2Tokenizer` (real-format files).

    The Qwen3-TTS prompt code slices token positions (`<|im_start|>assistant\\n` must be 3 tokens), so "assistant"
    has to be one token; the corpus repeats it and the result is checked.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator([_TOKENIZER_CORPUS] * 50 + ["assistant\n"] * 200, trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tok = Qwen2Tokenizer(vocab=model["vocab"], merges=merges)
    tok.add_special_tokens({"additional_special_tokens": TEXT_SPECIAL_TOKENS[1:]})
    prompt = tok("<|im_start|>assistant\nhi<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    head = tok("<|im_start|>assistant\n")["input_ids"]
    if len(head) != 3 or len(prompt) - len(tok("hi")["input_ids"]) != 8:
        raise RuntimeError(f"tiny tokenizer: prompt tokenization {prompt} does not match Qwen's 3+5 token frame")
    tok.save_pretrained(out_dir)
    return tok


def _codec_config(full_size: bool = False) -> dict[str, Any]:
    if full_size:  # the released tokenizer's shapes: Mimi's defaults (kyutai/mimi) + the package's decoder defaults
        encoder: dict[str, Any] = dict(num_quantizers=32, codebook_size=2048, sampling_rate=SAMPLE_RATE)
        decoder: dict[str, Any] = dict(codebook_size=2048, codebook_dim=512, num_quantizers=16)
        return dict(encoder_config=encoder, decoder_config=decoder, encoder_valid_num_quantizers=16,
                    input_sample_rate=SAMPLE_RATE, output_sample_rate=SAMPLE_RATE,
                    decode_upsample_rate=FRAME_SAMPLES, encode_downsample_rate=FRAME_SAMPLES)  # fmt: skip
    encoder = dict(  # transformers MimiConfig, 32 quantizers (16 kept) of 2048 codes, 24 kHz -> 12.5 Hz
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        head_dim=16, num_filters=4, codebook_dim=16, vector_quantization_hidden_dimension=16, upsample_groups=32,
        num_quantizers=32, codebook_size=2048, sampling_rate=SAMPLE_RATE,
    )  # fmt: skip
    decoder = dict(  # split RVQ (1 semantic + 15 acoustic) -> sliding-window transformer -> 1920x upsampling
        hidden_size=32, latent_dim=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, head_dim=16, codebook_dim=16, codebook_size=2048, decoder_dim=32, num_quantizers=16,
    )  # fmt: skip
    return dict(
        encoder_config=encoder,
        decoder_config=decoder,
        encoder_valid_num_quantizers=16,
        input_sample_rate=SAMPLE_RATE,
        output_sample_rate=SAMPLE_RATE,
        decode_upsample_rate=FRAME_SAMPLES,
        encode_downsample_rate=FRAME_SAMPLES,
    )


@torch.no_grad()
def _randomize_codebooks(model: torch.nn.Module) -> None:
    """Give the (EMA) codebooks random centroids: both classes start them at zero, which would make every frame
    encode to code 0 and decode to exact silence."""
    for module in model.modules():
        for name in ("embed_sum", "embedding_sum"):  # Mimi encoder buffers / Qwen decoder parameters
            table = getattr(module, name, None)
            if isinstance(table, torch.Tensor):
                table.copy_(torch.randn_like(table))
                module.cluster_usage.fill_(1.0)
        if hasattr(module, "_embed"):
            module._embed = None  # Mimi caches embed_sum / cluster_usage


@torch.no_grad()
def _calibrate_decoder(model: Any, target_rms: float = 0.1) -> None:
    """Make the random decoder audible and code-dependent: PyTorch's default init for its convolutions, zero biases
    (transformers' std-0.02 init shrinks the signal ~1e8-fold through the upsampling stack), then scale the final
    conv so random codes decode to ~`target_rms`."""
    dec = model.decoder
    for module in dec.modules():
        if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
            module.reset_parameters()
            if module.bias is not None:
                module.bias.zero_()  # random biases would swamp the code-dependent signal with a DC offset
    codes = torch.randint(0, dec.config.codebook_size, (1, dec.config.num_quantizers, 25))
    rms = float(dec(codes).pow(2).mean().sqrt())
    last = dec.decoder[-1].conv
    scale = target_rms / max(rms, 1e-12)
    last.weight.mul_(scale)
    if last.bias is not None:
        last.bias.mul_(scale)


def build_tiny_codec(out_dir: str | Path, seed: int = 0, *, full_size: bool = False) -> Path:
    """Save a tiny `Qwen3TTSTokenizerV2Model` (12 Hz speech tokenizer) + its `EncodecFeatureExtractor`.

    `full_size`: the released shapes instead (random weights; for speed benchmarks)."""
    apply_compat()
    from qwen_tts.core import Qwen3TTSTokenizerV2Config, Qwen3TTSTokenizerV2Model
    from transformers import EncodecFeatureExtractor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = Qwen3TTSTokenizerV2Model(Qwen3TTSTokenizerV2Config(**_codec_config(full_size))).eval()
    _randomize_codebooks(model)
    if not full_size:
        _calibrate_decoder(model)
    model.save_pretrained(out)
    EncodecFeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0).save_pretrained(out)
    return out


def _tts_config(text_vocab_size: int, special_ids: dict[str, int]) -> dict[str, Any]:
    hidden = 64
    talker = dict(
        vocab_size=3072, hidden_size=hidden, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, rope_theta=1_000_000,
        rope_scaling={"rope_type": "default", "mrope_section": [4, 2, 2], "interleaved": True},
        max_position_embeddings=4096, num_code_groups=16, text_hidden_size=32, text_vocab_size=text_vocab_size,
        codec_language_id=dict(LANGUAGE_IDS), spk_id={}, spk_is_dialect={}, **CODEC_IDS,
        code_predictor_config=dict(
            vocab_size=2048, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, head_dim=16, rope_theta=1_000_000, max_position_embeddings=64, num_code_groups=16,
        ),
    )  # fmt: skip
    speaker_encoder = dict(
        mel_dim=128, enc_dim=hidden, enc_channels=[32, 32, 32, 32, 96], enc_kernel_sizes=[5, 3, 3, 3, 1],
        enc_dilations=[1, 2, 3, 4, 1], enc_attention_channels=16, enc_res2net_scale=4, enc_se_channels=16,
        sample_rate=SAMPLE_RATE,
    )  # fmt: skip
    return dict(
        talker_config=talker,
        speaker_encoder_config=speaker_encoder,
        tokenizer_type="qwen3_tts_tokenizer_12hz",
        tts_model_size="tiny",
        tts_model_type="base",
        im_start_token_id=special_ids["<|im_start|>"],
        im_end_token_id=special_ids["<|im_end|>"],
        tts_pad_token_id=special_ids["<|tts_pad|>"],
        tts_bos_token_id=special_ids["<|tts_bos|>"],
        tts_eos_token_id=special_ids["<|tts_eos|>"],
    )


GENERATION_CONFIG = dict(
    do_sample=True, top_k=50, top_p=1.0, temperature=0.9, repetition_penalty=1.05,
    subtalker_dosample=True, subtalker_top_k=50, subtalker_top_p=1.0, subtalker_temperature=0.9, max_new_tokens=64,
)  # fmt: skip


def build_tiny_tts(out_dir: str | Path, seed: int = 0) -> Path:
    """Build a tiny Qwen3-TTS-12Hz *base* model dir (talker, code predictor, speaker encoder, `speech_tokenizer/`).

    Loadable with `voicepipe.models.load_tts(out_dir)` (i.e. `Qwen3TTSModel.from_pretrained`) with the hub off.
    """
    apply_compat()
    from qwen_tts.core.models import Qwen3TTSConfig, Qwen3TTSForConditionalGeneration, Qwen3TTSProcessor

    from voicepipe.models.compat import repair_config_dict

    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    tok = build_text_tokenizer(out)
    special_ids = {t: tok.convert_tokens_to_ids(t) for t in TEXT_SPECIAL_TOKENS}
    text_vocab = len(tok)
    cfg = _tts_config(text_vocab, special_ids)
    torch.manual_seed(seed)
    model = Qwen3TTSForConditionalGeneration(Qwen3TTSConfig(**cfg)).eval()
    model.save_pretrained(out)
    Qwen3TTSProcessor(tokenizer=tok).save_pretrained(out)
    cfg_path = out / "config.json"
    saved = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps(repair_config_dict(saved, cfg["talker_config"]["rope_scaling"]), indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n")
    build_tiny_codec(out / "speech_tokenizer", seed=seed)
    return out


def voiced_tone(seconds: float = 1.0, sr: int = SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """A deterministic voiced-like test signal (harmonics + a little noise), float32 mono."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 140.0 + 20.0 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    wav = sum(np.sin(k * phase) / k for k in range(1, 6)) * 0.2 + 0.01 * rng.standard_normal(t.size)
    return wav.astype(np.float32)


def build_tiny_custom_voice(out_dir: str | Path, speaker: str = "alice", seed: int = 0) -> Path:
    """Tiny fine-tuned-style checkpoint: a tiny base saved through `save_tts_checkpoint` with `speaker` in row 3000.

    The speaker embedding is the tiny model's own speaker encoder applied to a test tone, as the recipe does.
    """
    import tempfile

    from voicepipe.models.qwen import load_tts, save_tts_checkpoint

    with tempfile.TemporaryDirectory(prefix="tiny-base-") as tmp:
        base = build_tiny_tts(Path(tmp) / "base", seed=seed)
        tts = load_tts(base)
        emb = tts.model.extract_speaker_embedding(voiced_tone(2.0, seed=seed), SAMPLE_RATE)
        return save_tts_checkpoint(tts, out_dir, base_dir=base, speaker=speaker, speaker_embedding=emb)


# --------------------------------------------------------------------------------------------------------------------
# Corpus-stage models: Demucs (separation), Whisper (ASR), pyannote (diarization), speaker verification.


def _save_pyannote(model: Any, path: Path) -> None:
    """A pyannote `Model` as the Lightning checkpoint `Model.from_pretrained` reads (hand-built: pyannote saves
    checkpoints only through a Lightning Trainer)."""
    import lightning

    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": lightning.__version__}  # fmt: skip
    model.on_save_checkpoint(ckpt)  # adds pyannote.audio's versions/architecture/specifications
    torch.save(ckpt, path)


def build_tiny_demucs(out_dir: str | Path, seed: int = 0, *, full_size: bool = False) -> Path:
    """A tiny random `HTDemucs` saved as a demucs local repo: `<dir name>.yaml` (a bag of one) + `<sig>-<sha>.th`.

    `full_size`: demucs' default HTDemucs hyper-parameters with the released htdemucs' 7.8 s segment (random
    weights; for speed benchmarks).

    Load with `demucs.pretrained.get_model(<dir name>, repo=out_dir)` (what `voicepipe.models.load_demucs` does), the
    same layout as a released model copied locally (`htdemucs.yaml` + `955717e8-8726e21a.th`).
    """
    import hashlib

    from demucs.htdemucs import HTDemucs
    from demucs.states import get_state

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    sources = ["drums", "bass", "other", "vocals"]
    if full_size:
        model = HTDemucs(sources=sources, segment=7.8, samplerate=44100, audio_channels=2)
    else:  # real sources, sample rate, STFT size and depth; 4 channels and one cross-transformer layer (not 48 / 5)
        model = HTDemucs(
            sources=sources, channels=4, depth=4, nfft=4096, t_layers=1, t_heads=2,
            t_hidden_scale=1.0, dconv_comp=2, segment=4, samplerate=44100, audio_channels=2,
        )  # fmt: skip
    args, kwargs = model._init_args_kwargs  # recorded by demucs' @capture_init, as `demucs.states.serialize_model`
    package = {"klass": HTDemucs, "args": args, "kwargs": kwargs, "state": get_state(model, None), "training_args": {}}
    tmp = out / "model.th.tmp"
    torch.save(package, tmp)
    sig = f"{'full' if full_size else 'tiny'}{seed:04d}"
    sha = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    tmp.rename(out / f"{sig}-{sha}.th")
    (out / f"{out.name}.yaml").write_text(f"models: ['{sig}']\n")
    return out


WHISPER_LANGUAGES = ["en", "de", "es", "fr", "zh", "ja"]


def build_tiny_whisper(out_dir: str | Path, seed: int = 0, *, full_size: bool = False) -> Path:
    """A tiny random `WhisperForConditionalGeneration` + `WhisperProcessor` (real-format tokenizer/feature files).

    `generate(..., language="english", task="transcribe")` works (the generation config carries `lang_to_id`,
    `task_to_id`, `no_timestamps_token_id`); the text it produces is junk. `full_size`: Whisper-large-v3's shapes
    (1.55 B parameters, 128 mel bins, the tokenizer padded with filler tokens to the vocabulary's 51866; fp16)
    with random weights, for speed benchmarks.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator([_TOKENIZER_CORPUS] * 50, trainer=trainer)
    bpe_model = json.loads(bpe.to_str())["model"]
    vocab = dict(bpe_model["vocab"])
    vocab["<|endoftext|>"] = len(vocab)  # as in GPT-2 / Whisper: the last id of the base vocabulary
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in bpe_model["merges"]]
    tok = WhisperTokenizer(vocab=vocab, merges=merges)
    specials = ["<|startoftranscript|>", *[f"<|{c}|>" for c in WHISPER_LANGUAGES], "<|translate|>", "<|transcribe|>",
                "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]  # fmt: skip
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(1501)])  # timestamp tokens, as in the released vocab
    ids = {t: tok.convert_tokens_to_ids(t) for t in specials + ["<|endoftext|>"]}
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    # a random model would mostly emit timestamp tokens (decoded as ""): suppress them so the junk is visible text
    timestamps = list(range(ids["<|notimestamps|>"] + 1, len(tok)))

    if full_size:  # openai/whisper-large-v3
        shapes = dict(vocab_size=51866, num_mel_bins=128, d_model=1280, encoder_layers=32, decoder_layers=32,
                      encoder_attention_heads=20, decoder_attention_heads=20, encoder_ffn_dim=5120,
                      decoder_ffn_dim=5120, max_target_positions=448)  # fmt: skip
        tok.add_tokens([f"<|filler{i}|>" for i in range(51866 - len(tok))])  # the released vocabulary's size
    else:
        shapes = dict(vocab_size=len(tok), num_mel_bins=80, d_model=32, encoder_layers=1, decoder_layers=1,
                      encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                      max_target_positions=128)  # fmt: skip
    config = WhisperConfig(
        **shapes, max_source_positions=1500, decoder_start_token_id=sot, pad_token_id=eot, bos_token_id=eot,
        eos_token_id=eot,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    gen = GenerationConfig(
        decoder_start_token_id=sot, pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
        is_multilingual=True, lang_to_id={f"<|{c}|>": ids[f"<|{c}|>"] for c in WHISPER_LANGUAGES},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"], prev_sot_token_id=ids["<|startofprev|>"],
        suppress_tokens=timestamps, begin_suppress_tokens=[eot], forced_decoder_ids=None,
    )  # fmt: skip
    model.generation_config = gen
    if full_size:
        model = model.half()
    model.save_pretrained(out)
    features = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
    WhisperProcessor(feature_extractor=features, tokenizer=tok).save_pretrained(out)
    return out


def build_tiny_diarization(out_dir: str | Path, seed: int = 0, *, full_size: bool = False) -> Path:
    """A tiny random pyannote.audio 4 `SpeakerDiarization` pipeline dir, laid out like speaker-diarization-community-1.

    `config.yaml` + `segmentation/pytorch_model.bin` (`PyanNet`, powerset 3 speakers / 2 at once, 10 s chunks) +
    `embedding/pytorch_model.bin` (`XVectorSincNet`, 32-d, instead of the release's WeSpeaker ResNet34: same loader,
    far smaller) + `plda/{xvec_transform,plda}.npz` (a random orthonormal LDA/PLDA), loaded with
    `pyannote.audio.Pipeline.from_pretrained(out_dir)`. Checkpoints are written in the Lightning layout pyannote's
    `Model.from_pretrained` reads (hand-built: pyannote saves checkpoints only through a Lightning Trainer).
    `full_size`: community-1's shapes instead (segmentation-3.0's PyanNet with 4 LSTM layers, WeSpeaker ResNet34
    256-d embeddings, 128-d PLDA, batch sizes 32), random weights, for speed benchmarks.
    """
    import yaml

    from voicepipe.models.others import disable_pyannote_telemetry

    disable_pyannote_telemetry()
    import pyannote.audio
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.embedding import XVectorSincNet
    from pyannote.audio.models.segmentation import PyanNet

    out = Path(out_dir)
    for sub in ("segmentation", "embedding", "plda"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    save = _save_pyannote
    if full_size:
        seg = PyanNet(lstm={"hidden_size": 128, "num_layers": 4, "bidirectional": True, "monolithic": True},
                      linear={"hidden_size": 128, "num_layers": 2})  # fmt: skip
    else:
        seg = PyanNet(
            lstm={"hidden_size": 16, "num_layers": 1, "bidirectional": True, "monolithic": True},
            linear={"hidden_size": 16, "num_layers": 1},
        )
    seg.specifications = Specifications(
        problem=Problem.MONO_LABEL_CLASSIFICATION, resolution=Resolution.FRAME, duration=10.0, min_duration=10.0,
        classes=["speaker#1", "speaker#2", "speaker#3"], powerset_max_classes=2, permutation_invariant=True,
    )  # fmt: skip
    seg.build()
    save(seg, out / "segmentation" / "pytorch_model.bin")
    if full_size:
        from pyannote.audio.models.embedding import WeSpeakerResNet34

        dim, lda_dim, batch = 256, 128, 32
        emb = WeSpeakerResNet34()
    else:
        dim, lda_dim, batch = 32, 16, 8
        emb = XVectorSincNet(dimension=dim)
    emb.specifications = Specifications(
        problem=Problem.REPRESENTATION, resolution=Resolution.CHUNK, duration=5.0, min_duration=0.5
    )
    save(emb, out / "embedding" / "pytorch_model.bin")
    rng = np.random.default_rng(seed)
    lda, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    np.savez(out / "plda" / "xvec_transform.npz", mean1=np.zeros(dim), mean2=np.zeros(lda_dim), lda=lda[:, :lda_dim])
    tr, _ = np.linalg.qr(rng.standard_normal((lda_dim, lda_dim)))
    np.savez(out / "plda" / "plda.npz", mu=np.zeros(lda_dim), tr=tr, psi=np.linspace(2.0, 0.5, lda_dim))
    config = {
        "dependencies": {"pyannote.audio": pyannote.audio.__version__},
        "pipeline": {
            "name": "pyannote.audio.pipelines.SpeakerDiarization",
            "params": {
                "clustering": "VBxClustering",
                "embedding": "$model/embedding",
                "embedding_batch_size": batch,
                "embedding_exclude_overlap": True,
                "plda": "$model/plda",
                "segmentation": "$model/segmentation",
                "segmentation_batch_size": batch,
            },  # fmt: skip
        },
        "params": {"clustering": {"threshold": 0.6, "Fa": 0.07, "Fb": 0.8}, "segmentation": {"min_duration_off": 0.0}},
    }
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def build_tiny_wavlm_sv(out_dir: str | Path, seed: int = 0, *, full_size: bool = False) -> Path:
    """A tiny random `WavLMForXVector` + `Wav2Vec2FeatureExtractor`, laid out like microsoft/wavlm-base-plus-sv
    (`config.json`, `model.safetensors`, `preprocessor_config.json`); `load_speaker_encoder(out_dir)` loads it.

    Real frame rate (the 7-layer conv stack, 320x downsampling of 16 kHz audio), group-norm feature encoder,
    weighted layer sum and the 512-d x-vector output; small widths and depth. `full_size`: WavLM-base-plus-sv's
    shapes (768 hidden, 12 layers, 512-d x-vector over a 5-layer TDNN; ~95 M parameters), random weights, for speed
    benchmarks. Embeddings of random weights are junk: for loading and plumbing tests only.
    """
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMForXVector

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    common = dict(use_weighted_layer_sum=True, feat_extract_norm="group", xvector_output_dim=512)
    if full_size:  # WavLMConfig's defaults are WavLM-base(-plus)
        config = WavLMConfig(**common)
    else:
        config = WavLMConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(32,) * 7,
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, num_buckets=32, max_bucket_distance=100,
            tdnn_dim=(32, 32, 32, 32, 96), **common,
        )  # fmt: skip
    torch.manual_seed(seed)
    WavLMForXVector(config).eval().save_pretrained(out)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=True).save_pretrained(out)  # fmt: skip
    return out


def build_tiny_wespeaker(out_dir: str | Path, seed: int = 0) -> Path:
    """pyannote.audio's `WeSpeakerResNet34` with random weights as `<dir>/pytorch_model.bin`, the layout of
    pyannote/wespeaker-voxceleb-resnet34-LM (and of community-1's `embedding/`); `load_speaker_encoder(out_dir)`.

    The class has one size (6.6 M parameters, 256-d): this is the released architecture with random weights,
    so it serves both the plumbing tests and the GPU speed benchmark."""
    from voicepipe.models.others import disable_pyannote_telemetry

    disable_pyannote_telemetry()
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.embedding import WeSpeakerResNet34

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = WeSpeakerResNet34()
    model.specifications = Specifications(
        problem=Problem.REPRESENTATION, resolution=Resolution.CHUNK, duration=5.0, min_duration=0.5
    )
    _save_pyannote(model, out / "pytorch_model.bin")
    return out
