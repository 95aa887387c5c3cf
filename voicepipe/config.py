"""Typed settings: environment variables (VOICEPIPE_*) over an optional YAML file over defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from voicepipe.errors import ConfigError

DEFAULT_HOME = Path(os.environ.get("VOICEPIPE_HOME", Path.cwd() / "var"))


class Settings(BaseSettings):
    """Everything configurable about a voicepipe installation.

    `store_url` picks the artifact store: `file:///abs/dir` (or a bare path) for the local backend,
    `s3://bucket[/prefix]` for S3/MinIO (then `s3_endpoint_url` and credentials apply).
    """

    model_config = SettingsConfigDict(env_prefix="VOICEPIPE_", extra="forbid")

    home: Path = DEFAULT_HOME
    store_url: str = ""  # empty -> file://{home}/store
    s3_endpoint_url: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: SecretStr | None = None
    s3_region: str = "us-east-1"
    s3_max_attempts: int = 3
    s3_connect_timeout: float = 5.0
    # links shown to people (Prefect UI artifacts): never s3:// (voicepipe.store.links)
    s3_public_endpoint_url: str | None = None  # the S3 endpoint as browsers reach it (default: s3_endpoint_url)
    link_base_url: str | None = None  # the store relay as browsers reach it (permanent links); else presigned URLs
    link_expires_s: int = 7 * 24 * 3600  # presigned links' lifetime (S3's SigV4 maximum: 7 days)
    offline: bool = True  # never reach a model hub unless explicitly allowed
    models_dir: Path | None = None  # where local model directories live (base model, codec, ...)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # The speaker model behind every speaker decision (corpus target selection and filters, evaluation SIM and the
    # promotion margin): wavlm = transformers' WavLMForXVector (microsoft/wavlm-base-plus-sv family), wespeaker =
    # pyannote's WeSpeaker ResNet34 (also found inside a local speaker-diarization-community-1 dir), resemblyzer =
    # the GE2E d-vector shipped in its wheel. auto = the first verification model found locally (wavlm, then
    # wespeaker), else resemblyzer, recorded as a fallback in every report. See voicepipe.models.speaker.
    speaker_backend: Literal["auto", "wavlm", "wespeaker", "campplus", "resemblyzer"] = "auto"
    speaker_model: str | None = None  # that backend's model: a local dir/file or hub id (None: the backend default)
    log_level: str = "INFO"

    @property
    def resolved_store_url(self) -> str:
        return self.store_url or f"file://{(self.home / 'store').resolve()}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"settings file {path}: not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"settings file {path}: unreadable ({e.__class__.__name__}: {e})") from None
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else "invalid YAML"
        raise ConfigError(f"settings file {path}: not valid YAML ({first})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"settings file {path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build settings: explicit overrides > VOICEPIPE_* env > YAML file (arg or $VOICEPIPE_CONFIG) > defaults."""
    config_file = config_file or os.environ.get("VOICEPIPE_CONFIG")
    file_values = _read_yaml(Path(config_file)) if config_file else {}
    env_keys = {k[len("VOICEPIPE_") :].lower() for k in os.environ if k.startswith("VOICEPIPE_")}
    values = {k: v for k, v in file_values.items() if k not in env_keys}
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(**values)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "settings"
        source = f"settings file {config_file}" if config_file else "settings"
        raise ConfigError(f"{source}: {where}: {err['msg']}") from None


def masked(settings: Settings) -> dict[str, Any]:
    """Settings as a plain dict with secrets masked, for display."""
    out: dict[str, Any] = {}
    for name, value in settings.model_dump().items():
        if isinstance(value, SecretStr):
            value = "********" if value.get_secret_value() else ""
        elif isinstance(value, Path):
            value = str(value)
        out[name] = value
    out["store_url"] = settings.resolved_store_url
    return out
