"""Issue 2's bad inputs through the real entry point: exit code 2 and one line naming the input and the reason."""

import subprocess
import sys
from pathlib import Path


def _voicepipe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "voicepipe.cli", *args], capture_output=True, text=True, timeout=300)


def _one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for needle in needles:
        assert needle in lines[0]


def test_unknown_store_url_scheme() -> None:
    _one_line_error(
        _voicepipe("store", "check", "--store", "ftp://somewhere/bucket"), "ftp://somewhere/bucket", "scheme"
    )


def test_unreadable_settings_file(tmp_path: Path) -> None:
    cfg = tmp_path / "settings.yaml"
    cfg.write_text("store_url: [unclosed\n")
    _one_line_error(_voicepipe("config", "show", "--config", str(cfg)), str(cfg), "YAML")


def test_missing_model_directory(train_corpus_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    r = _voicepipe(
        "train",
        "--corpus",
        str(train_corpus_dir),
        "--base",
        str(missing),
        "--speaker",
        "alice",
        "--out",
        str(tmp_path / "o"),
    )
    _one_line_error(r, str(missing), "no such file or directory")
    assert not (tmp_path / "o" / "training.json").exists()
