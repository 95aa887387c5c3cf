"""LoRA runs export merged full weights; corpus from and checkpoints to the artifact store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from voicepipe.config import load_settings
from voicepipe.errors import InputError
from voicepipe.store import open_store
from voicepipe.train import load_config, train


def test_lora_from_store_corpus_exports_merged_weights_to_store(structured_corpus_dir: Path, tiny_tts_dir: Path,
                                                                 tmp_path: Path) -> None:  # fmt: skip
    settings = load_settings(store_url=f"file://{tmp_path / 'store'}", home=tmp_path / "home")
    store = open_store(settings)
    corpus_ref = store.put_dir(structured_corpus_dir, step="corpus")
    store.set_ref("corpus/tester/latest", corpus_ref.sha256)

    cfg = load_config("lora", epochs=2, lr=1e-2, batch_size=2, grad_accum=1, keep_best=1, collapse_ratio=None,
                      save_state=False)  # fmt: skip
    r = train("store:corpus/tester/latest", tiny_tts_dir, "Tester", tmp_path / "run", cfg, settings=settings,
              store=settings, progress=False)  # fmt: skip
    assert r.status == "completed"
    ckpt = r.out_dir / r.best[0]["checkpoint"]
    w = load_file(str(ckpt / "model.safetensors"))
    assert not any("lora_" in k or "base_layer" in k for k in w)  # merged: plain full-weight keys
    base = load_file(str(tiny_tts_dir / "model.safetensors"))
    k = "talker.model.layers.0.self_attn.q_proj.weight"
    assert w[k].shape == base[k].shape and not torch.allclose(w[k], base[k])  # adapters merged in
    e = "talker.model.text_embedding.weight"
    torch.testing.assert_close(w[e], base[e])  # not a LoRA target: untouched

    from voicepipe.models import load_tts

    tts = load_tts(ckpt)
    wavs, sr = tts.generate_custom_voice(text="Hi.", speaker="tester", language="auto", max_new_tokens=4)
    assert sr == 24000 and wavs[0].size > 0

    ref = store.get_ref("train/tester/latest")
    assert ref is not None and ref["sha"] == r.store["training_json"]
    doc = json.loads(store.get_bytes(ref["sha"]))
    assert doc["run"]["status"] == "completed" and doc["config"]["method"] == "lora"
    sha = r.store["checkpoints"][r.best[0]["checkpoint"]]
    got = store.get_dir(sha, tmp_path / "fetched")
    assert (got / "model.safetensors").read_bytes() == (ckpt / "model.safetensors").read_bytes()


def test_export_merges_lora_like_peft_and_casts_to_the_base_dtype(tiny_tts_dir: Path) -> None:
    from voicepipe.models import load_tts
    from voicepipe.train.recipe import _export_model, _wrap_lora

    cfg = load_config("lora")
    model = _wrap_lora(load_tts(tiny_tts_dir).model, cfg)
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)  # non-zero adapters
    merged = _export_model(model, cfg, torch.float32).state_dict()
    reference = model.merge_and_unload().state_dict()  # peft's own merge (in place)
    assert merged.keys() == reference.keys()
    for k in reference:
        torch.testing.assert_close(merged[k], reference[k], msg=k)

    full = load_tts(tiny_tts_dir).model
    bf16 = _export_model(full, load_config("v8"), torch.bfloat16)
    w = bf16.state_dict()
    assert all(v.dtype == torch.bfloat16 for v in w.values())
    k = "talker.codec_head.weight"
    torch.testing.assert_close(w[k], full.state_dict()[k].to(torch.bfloat16))


def test_corpus_from_s3_prefix_and_checkpoints_to_s3_store(structured_corpus_dir: Path, tiny_tts_dir: Path,
                                                           s3_server, s3_settings, tmp_path: Path) -> None:  # fmt: skip
    from tests.fixtures.store import raw_s3_client

    s3 = raw_s3_client(s3_server)
    bucket = "voicepipe-corpora"
    s3.create_bucket(Bucket=bucket)
    for f in structured_corpus_dir.rglob("*"):
        if f.is_file():
            s3.upload_file(str(f), bucket, f"tester/v1/{f.relative_to(structured_corpus_dir).as_posix()}")
    cfg = load_config("v8", epochs=1, batch_size=2, grad_accum=1, keep_best=1, save_state=False, collapse_ratio=None)
    r = train(f"s3://{bucket}/tester/v1", tiny_tts_dir, "tester", tmp_path / "run", cfg, settings=s3_settings,
              store=s3_settings, progress=False)  # fmt: skip
    assert r.status == "completed"
    assert (tmp_path / "run" / "corpus" / "train_with_codes.jsonl").exists()
    doc = json.loads((tmp_path / "run" / "training.json").read_text())
    assert doc["run"]["corpus_version"] == "test-corpus-1" and doc["run"]["corpus"].startswith("s3://")
    store = open_store(s3_settings)
    assert store.get_ref("train/tester/latest")["sha"] == r.store["training_json"]
    with pytest.raises(InputError, match="no objects under that prefix"):
        train(f"s3://{bucket}/nobody", tiny_tts_dir, "tester", tmp_path / "run2", cfg, settings=s3_settings)
