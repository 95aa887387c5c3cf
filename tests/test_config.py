import subprocess
import sys
from pathlib import Path

import pytest

from voicepipe.config import load_settings, masked
from voicepipe.errors import ConfigError


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "vp.yaml"
    cfg.write_text("store_url: s3://from-file\ns3_region: eu-west-1\ns3_secret_key: hunter2\n")
    monkeypatch.setenv("VOICEPIPE_STORE_URL", "s3://from-env")
    s = load_settings(cfg)
    assert s.store_url == "s3://from-env"
    assert s.s3_region == "eu-west-1"
    shown = masked(s)
    assert shown["s3_secret_key"] == "********"
    assert "hunter2" not in str(shown)


def test_default_store_is_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOICEPIPE_STORE_URL", raising=False)
    s = load_settings(home=tmp_path)
    assert s.resolved_store_url == f"file://{tmp_path.resolve()}/store"


@pytest.mark.parametrize(
    "content, reason",
    [("a: [", "not valid YAML"), ("- 1\n- 2\n", "expected a mapping"), ("bogus_key: 1\n", "bogus_key")],
)
def test_bad_settings_file(tmp_path: Path, content: str, reason: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(content)
    with pytest.raises(ConfigError, match=reason):
        load_settings(cfg)


def test_cli_bad_settings_file_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    r = subprocess.run(
        [sys.executable, "-m", "voicepipe.cli", "config", "show", "--config", str(missing)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: settings file {missing}: not found"
