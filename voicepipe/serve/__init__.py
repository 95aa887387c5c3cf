"""voicepipe.serve: real-time, OpenAI-compatible speech server over a batched, CUDA-graphed generation engine.

    from voicepipe.serve import ServeConfig, create_app
    app = create_app(ServeConfig(voices=["alice"], voices_dir=Path("voices")))

Names are imported lazily so that `voicepipe --help` does not load torch.
"""

from typing import Any

_EXPORTS = {
    "create_app": "voicepipe.serve.app",
    "load_voices": "voicepipe.serve.app",
    "ServeConfig": "voicepipe.serve.deps",
    "EngineConfig": "voicepipe.serve.engine",
    "GenerationConfig": "voicepipe.serve.engine",
    "TTSEngine": "voicepipe.serve.engine",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)
