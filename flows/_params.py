"""A flow's parameters: its pydantic params object (the Prefect UI's form) or the same fields as keywords.

`train_voice` and `evaluate_checkpoints` take either; a parent flow such as `train_and_evaluate` calls them with
keywords. `flow_params` turns either into the params object, so the flow body reads as the DAG.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel

from voicepipe.errors import InputError

P = TypeVar("P", bound=BaseModel)


def flow_params(model: type[P], params: P | None, *, flow: str, required: Sequence[str], **keywords: Any) -> P:
    """`params` when given (the keywords are then ignored); else `model(**keywords)`, where a keyword left None
    takes the field's default. Raises `InputError` naming `flow` when a `required` keyword is missing or empty."""
    if params is not None:
        return params
    if not all(keywords.get(name) for name in required):
        names = [f"{n}=" for n in required]
        listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
        raise InputError(f"{flow}: give params, or {listed}")
    return model(**{k: v for k, v in keywords.items() if v is not None})
