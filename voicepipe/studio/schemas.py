"""Request and response bodies of the studio API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from voicepipe.studio.session import Take


class PromptOut(BaseModel):
    id: str
    index: int
    text: str


class SessionOut(BaseModel):
    speaker: str
    session: str
    language: str
    script_name: str
    store: str
    prompts: list[PromptOut]
    takes: list[Take]
    progress: dict[str, Any]


class TakeOut(BaseModel):
    take: Take
    progress: dict[str, Any]


class Decision(BaseModel):
    keep: bool
