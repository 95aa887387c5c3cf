"""Request/response bodies of the speech API (OpenAI `/v1/audio/speech` plus voicepipe's extensions)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class SpeechRequest(BaseModel):
    """OpenAI's speech request. Types are kept loose here so that bad values get voicepipe's own 400 messages."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field("voicepipe", description="Accepted and ignored beyond logging (the voice picks the model).")
    input: str = Field(..., description="Text to speak, at most `max_input_chars` characters.")
    voice: str | dict[str, Any] = Field(..., description="A loaded voice name (see GET /v1/voices), or an object "
                                        '`{"id": name}` as the OpenAI SDK allows.')
    instructions: str | None = Field(None, description="Style instruction, passed to the model as its instruct text.")
    response_format: str = Field("mp3", description="wav, pcm (s16le 24 kHz mono), mp3, opus (Ogg), flac or aac.")
    speed: float = Field(1.0, description="0.25 to 4.0; time-stretch without pitch change.")
    stream: bool | None = Field(None, description="Extension (as Kokoro-FastAPI/vLLM-Omni): false asks for one "
                                "whole file with a Content-Length; unset or true streams (OpenAI's default).")
    stream_format: str | None = Field(None, description="'audio' (raw chunked bytes, the default) or 'sse' (base64 "
                                      "events).")
    language: str = Field("auto", description="Extension: model language name or 'auto'.")

    @field_validator("voice", mode="before")
    @classmethod
    def _voice(cls, v: Any) -> str:
        if isinstance(v, dict):
            v = v.get("id")
        if not isinstance(v, str) or not v:
            raise ValueError('must be a voice name or an object {"id": "<voice name>"}')
        return v

    @property
    def voice_name(self) -> str:
        """The requested voice's name (from a string or an `{"id": ...}` object)."""
        return self.voice if isinstance(self.voice, str) else str(self.voice.get("id"))


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI-style error envelope: {"error": {"message", "type", "param", "code"}}."""

    error: ErrorBody


class VoiceCard(BaseModel):
    """Why this voice is the one served: the corpus and checkpoint it came from and how it was evaluated."""

    model_config = ConfigDict(extra="allow")

    corpus_version: str | None = None
    checkpoint: str | None = None
    epoch: int | None = None
    language: str | None = Field(None, description="The language the voice was trained with (the default prompt).")
    selection_rule: str | None = Field(None, description="strict, or plumbing (tests/demos only).")
    reason: str | None = None
    evaluation: dict[str, Any] | None = Field(
        None, description="SIM, the base model's zero-shot clone SIM, SIM vs base, WER, CER, validity, RTF.")

class AudioVoicesResponse(BaseModel):
    """GET /v1/audio/voices (Kokoro-FastAPI's shape): the names `voice` accepts."""

    voices: list[str]


class VoiceInfo(BaseModel):
    name: str
    speaker: str | None
    source: str
    languages: list[str]
    max_concurrent: int
    card: VoiceCard = Field(default_factory=VoiceCard)


class VoicesResponse(BaseModel):
    object: str = "list"
    data: list[VoiceInfo]


class ModelInfo(BaseModel):
    id: str
    object: str = "model"
    owned_by: str = "voicepipe"
    meta: dict[str, Any] = {}


class ModelsResponse(BaseModel):
    object: str = "list"
    data: list[ModelInfo]
