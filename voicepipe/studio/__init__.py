"""voicepipe.studio: record a scripted corpus in the browser, every take checked while the speaker is still there.

    voicepipe studio --speaker james [--script prompts.txt]     # the page (FastAPI + plain HTML/JS)
    session = StudioSession(store, "james", "main")             # takes, decisions, progress; resumable anywhere
    check_take(wav, sr, text, phones=..., asr=...)              # clipping, level, noise, rate, edges, words
    voicepipe corpus build --studio main --speaker james ...    # the corpus from the kept takes (corpus.studio)

Modules load lazily, so `import voicepipe.studio` stays cheap for the CLI.
"""

from typing import Any

_LAZY = {
    "Thresholds": "voicepipe.studio.checks",
    "check_take": "voicepipe.studio.checks",
    "DEFAULT_SCRIPT": "voicepipe.studio.script",
    "Prompt": "voicepipe.studio.script",
    "Script": "voicepipe.studio.script",
    "coverage": "voicepipe.studio.script",
    "load_script": "voicepipe.studio.script",
    "parse_script": "voicepipe.studio.script",
    "phonemize": "voicepipe.studio.script",
    "SessionDoc": "voicepipe.studio.session",
    "StudioSession": "voicepipe.studio.session",
    "Take": "voicepipe.studio.session",
    "list_sessions": "voicepipe.studio.session",
    "read_session": "voicepipe.studio.session",
    "session_ref": "voicepipe.studio.session",
    "Studio": "voicepipe.studio.deps",
    "StudioConfig": "voicepipe.studio.deps",
    "create_app": "voicepipe.studio.app",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'voicepipe.studio' has no attribute {name!r}")
