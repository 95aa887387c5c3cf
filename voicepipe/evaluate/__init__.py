"""voicepipe.evaluate: score every checkpoint (validity, speaker similarity vs the base model's zero-shot clone,
WER/CER, DNSMOS, RTF), select the best by a documented rule, report, and promote it to `voices/<speaker>`."""

from voicepipe.evaluate.runner import (
    EvalConfig,
    EvalResult,
    Row,
    evaluate_checkpoints,
    finish,
    load_script,
    prepare,
    promote,
)
from voicepipe.evaluate.selection import Selection, SelectionRule, select_checkpoint

__all__ = [
    "EvalConfig",
    "EvalResult",
    "Row",
    "Selection",
    "SelectionRule",
    "evaluate_checkpoints",
    "finish",
    "load_script",
    "prepare",
    "promote",
    "select_checkpoint",
]
