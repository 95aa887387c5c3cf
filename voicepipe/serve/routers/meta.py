"""Discovery and operations endpoints: voices, models, health, readiness, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from voicepipe.serve.deps import get_state, require_auth
from voicepipe.serve.schemas import ModelInfo, ModelsResponse, VoiceCard, VoiceInfo, VoicesResponse

router = APIRouter()


@router.get("/v1/voices", response_model=VoicesResponse, dependencies=[Depends(require_auth)])
def list_voices(request: Request) -> VoicesResponse:
    """The loaded voices (the `voice` values /v1/audio/speech accepts), each with its card (corpus version,
    checkpoint, trained language, evaluation summary)."""
    st = get_state(request)
    return VoicesResponse(data=[
        VoiceInfo(name=v.name, speaker=v.speaker, source=v.source, languages=v.languages,
                  max_concurrent=v.engine.cfg.max_batch, card=VoiceCard(**v.card))
        for v in st.voices.values()
    ])  # fmt: skip


@router.get("/v1/models", response_model=ModelsResponse, dependencies=[Depends(require_auth)])
def list_models(request: Request) -> ModelsResponse:
    """OpenAI-style model list: `voicepipe` (any `model` value is accepted) plus one entry per voice."""
    st = get_state(request)
    data = [ModelInfo(id="voicepipe", meta={"voices": sorted(st.voices)})]
    data += [ModelInfo(id=f"voicepipe/{n}", meta={"source": v.source}) for n, v in st.voices.items()]
    return ModelsResponse(data=data)


@router.get("/health")
def health() -> dict:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/ready")
def ready(request: Request) -> JSONResponse:
    """Readiness: every voice loaded and its engine running (503 until then)."""
    st = get_state(request)
    ok = st.ready and all(v.engine._thread is not None for v in st.voices.values())
    body = {"ready": ok, "voices": sorted(st.voices)}
    if st.load_error:
        body["error"] = st.load_error
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics")
def metrics(request: Request) -> Response:
    """Prometheus exposition."""
    st = get_state(request)
    return Response(generate_latest(st.metrics.registry), media_type=CONTENT_TYPE_LATEST)
