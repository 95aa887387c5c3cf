"""Issue 8, CPU part: the recipe under 2-process DDP (gloo) equals a 1-process run on the same data.

One optimizer step = 2 utterances in both runs: 1 process x micro-batch of 2, or 2 processes x 1 each. The loss is a
token mean over the whole step, so the gradients (and so the weights) agree up to float summation order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = dict(epochs=2, lr=1e-3, grad_accum=1, export=False, save_state=True, collapse_ratio=None,
              divergence_factor=None, patience=5)  # fmt: skip


def _run(args: list[str], spec: dict) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([*args, "-m", "tests.fixtures.train", json.dumps(spec)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)  # fmt: skip
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]


def run_single_and_two_process(config: dict, corpus: Path, base: Path, tmp_path: Path, name: str,
                               port: int) -> dict:  # fmt: skip
    """Train the same data in 1 process (micro-batch 2) and in 2 gloo processes (1 each); check both ranks end with
    the same weights and the per-step losses match the 1-process run. Returns the 2-process run's training.json."""
    spec = dict(corpus=str(corpus), base=str(base))
    _run([sys.executable], {**spec, "config": {**config, "batch_size": 2}, "out": str(tmp_path / "single"),
                            "report": str(tmp_path / "single")})  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    _run(torchrun, {**spec, "config": {**config, "batch_size": 1}, "out": str(tmp_path / name),
                    "report": str(tmp_path / name)})  # fmt: skip

    r0 = json.loads((tmp_path / f"{name}.rank0.json").read_text())
    r1 = json.loads((tmp_path / f"{name}.rank1.json").read_text())
    single = json.loads((tmp_path / "single.rank0.json").read_text())
    assert r0["digest"] == r1["digest"]  # both ranks end with bit-identical weights
    doc = json.loads((tmp_path / name / "training.json").read_text())
    assert doc["run"]["world_size"] == 2
    assert len(r0["losses"]) == len(single["losses"]) == 4  # 4 utterances / 2 per step x 2 epochs
    for a, b in zip(r0["losses"], single["losses"], strict=True):
        assert abs(a - b) < 1e-4 * max(1.0, abs(b)), (r0["losses"], single["losses"])
    return doc


@pytest.mark.slow
def test_two_process_gloo_ddp_matches_single_process(structured_corpus_dir: Path, tiny_tts_dir: Path,
                                                     tmp_path: Path) -> None:  # fmt: skip
    import torch
    from safetensors.torch import load_file

    run_single_and_two_process(CONFIG, structured_corpus_dir, tiny_tts_dir, tmp_path, "ddp", 29517)
    wa = load_file(str(tmp_path / "single" / "state" / "model.safetensors"))
    wb = load_file(str(tmp_path / "ddp" / "state" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5, msg=k)
