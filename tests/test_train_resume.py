"""A run killed mid-epoch resumes from its saved state and ends where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
CONFIG = dict(epochs=3, lr=1e-3, batch_size=1, grad_accum=1, state_every_steps=1, export=False, collapse_ratio=None,
              divergence_factor=None, patience=5)  # fmt: skip


def _launch(spec: dict) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "tests.fixtures.train", json.dumps(spec)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _step(out: Path) -> int:
    try:
        return json.loads((out / "state" / "trainer.json").read_text())["global_step"]
    except (OSError, ValueError, KeyError):
        return 0


def test_resume_after_kill_matches_uninterrupted(structured_corpus_dir: Path, tiny_tts_dir: Path,
                                                 tmp_path: Path) -> None:  # fmt: skip
    base = dict(corpus=str(structured_corpus_dir), base=str(tiny_tts_dir), config=CONFIG)
    full = _launch({**base, "out": str(tmp_path / "full"), "report": str(tmp_path / "full")})
    killed_out = tmp_path / "killed"
    victim = _launch({**base, "out": str(killed_out), "report": str(tmp_path / "victim")})
    deadline = time.time() + 600
    while _step(killed_out) < 6 and victim.poll() is None and time.time() < deadline:  # mid epoch 2 (4 steps/epoch)
        time.sleep(0.2)
    assert victim.poll() is None, "the run finished before it could be killed:\n" + victim.stdout.read()[-3000:]
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done_before = _step(killed_out)
    assert 0 < done_before < 12

    resumed = _launch({**base, "out": str(killed_out), "report": str(tmp_path / "resumed")})
    for p in (full, resumed):
        out, _ = p.communicate(timeout=900)
        assert p.returncode == 0, out[-3000:]

    a = json.loads((tmp_path / "full.rank0.json").read_text())
    b = json.loads((tmp_path / "resumed.rank0.json").read_text())
    assert b["resumed_from_step"] == done_before and a["resumed_from_step"] == 0
    assert a["status"] == b["status"] == "completed"
    # same final weights and optimizer state as the run that was never interrupted
    wa = load_file(str(tmp_path / "full" / "state" / "model.safetensors"))
    wb = load_file(str(killed_out / "state" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6, msg=k)
    assert len(a["losses"]) == len(b["losses"]) == 12
    assert b["losses"] == a["losses"] or max(abs(x - y) for x, y in zip(a["losses"], b["losses"], strict=True)) < 1e-4
    ea = json.loads((tmp_path / "full" / "training.json").read_text())["epochs"]
    eb = json.loads((killed_out / "training.json").read_text())["epochs"]
    assert [round(e["val_loss"], 4) for e in ea] == [round(e["val_loss"], 4) for e in eb]


def test_save_state_survives_a_kill_during_cleanup(tmp_path: Path) -> None:
    """Killed after the new state was swapped in but while `state.old` was being deleted: the next save must still
    work (it failed with 'Directory not empty' when renaming state -> state.old) and keep the newest state."""
    from accelerate import Accelerator

    from voicepipe.train.recipe import _save_state, _TrainerState

    state = tmp_path / "state"
    state.mkdir()
    (state / "trainer.json").write_text(json.dumps({"global_step": 5}))
    leftover = tmp_path / "state.old"
    (leftover / "half-deleted").mkdir(parents=True)
    (leftover / "half-deleted" / "model.safetensors").write_bytes(b"x")
    ts = _TrainerState(fingerprint="f")
    ts.global_step = 6
    _save_state(Accelerator(cpu=True), ts, state)
    assert json.loads((state / "trainer.json").read_text())["global_step"] == 6
    assert not leftover.exists() and not (tmp_path / "state.tmp").exists()
