"""Issue 4, CPU part: the recipe under 2-process FSDP2 (gloo, `distributed: fsdp`) equals a 1-process run.

Same setup as test_train_ddp: one optimizer step = 2 utterances (1 process x 2, or 2 processes x 1). Here the
per-epoch checkpoints are exported: under FSDP rank 0 gathers the sharded weights and writes them through
`save_tts_checkpoint`, and the result must reload through `load_tts`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_train_ddp import CONFIG, run_single_and_two_process

FSDP = {**CONFIG, "export": True, "save_state": False, "distributed": "fsdp"}


def test_fsdp_config_refuses_resume_state_and_lora() -> None:
    from voicepipe.errors import ConfigError
    from voicepipe.train import load_config

    assert load_config("v8").distributed == "ddp"
    with pytest.raises(ConfigError, match="resumable training state is DDP-only"):
        load_config("v8", distributed="fsdp")
    with pytest.raises(ConfigError, match="LoRA"):
        load_config("v8", distributed="fsdp", save_state=False, method="lora")


@pytest.mark.slow
def test_two_process_gloo_fsdp_matches_single_process(structured_corpus_dir: Path, tiny_tts_dir: Path,
                                                      tmp_path: Path) -> None:  # fmt: skip
    import torch
    from safetensors.torch import load_file

    from voicepipe.models import load_tts

    doc = run_single_and_two_process(FSDP, structured_corpus_dir, tiny_tts_dir, tmp_path, "fsdp", 29519)
    assert doc["config"]["distributed"] == "fsdp"
    assert [b["checkpoint"] for b in doc["best"]]  # exported checkpoints, ranked by val loss
    ref_doc = json.loads((tmp_path / "single" / "training.json").read_text())
    for e, f in zip(ref_doc["epochs"], doc["epochs"], strict=True):
        assert abs(e["val_loss"] - f["val_loss"]) < 1e-4 * max(1.0, abs(e["val_loss"]))

    ckpt = tmp_path / "fsdp" / "epoch-002"
    wa = load_file(str(tmp_path / "single" / "epoch-002" / "model.safetensors"))
    wb = load_file(str(ckpt / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5, msg=k)
    base_w = load_file(str(tiny_tts_dir / "model.safetensors"))
    assert any(not torch.equal(wb[k], base_w[k]) for k in wb if k in base_w)  # training changed the weights

    tts = load_tts(ckpt)  # self-contained: reloads through the production loader
    loaded = tts.model.state_dict()
    for k in wb:
        torch.testing.assert_close(loaded[k], wb[k], msg=k)
    assert "tester" in json.dumps(json.loads((ckpt / "config.json").read_text()).get("talker_config", {}))
