"""The studio's JSON API (the page in `static/` is its only client)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from voicepipe.studio.deps import Studio, get_studio
from voicepipe.studio.schemas import Decision, PromptOut, SessionOut, TakeOut

router = APIRouter(prefix="/api")


@router.get("/session", response_model=SessionOut)
def session(studio: Studio = Depends(get_studio)) -> SessionOut:
    """The script, every take so far (with its checks and status) and the progress."""
    s = studio.session
    progress = s.progress()  # reads the latest document first
    return SessionOut(speaker=s.speaker, session=s.session, language=s.doc.language, script_name=s.script.name,
                      store=str(getattr(studio.store, "url", "")),
                      prompts=[PromptOut(id=p.id, index=p.index, text=p.text) for p in s.script.prompts],
                      takes=s.doc.takes, progress=progress)


@router.post("/takes", response_model=TakeOut)
async def upload_take(request: Request, prompt_id: str = Query(..., description="Id of the prompt read."),
                      studio: Studio = Depends(get_studio)) -> TakeOut:
    """Store one take (the request body is the audio, e.g. `audio/wav`), check it and return the checks."""
    data = await request.body()
    ctype = request.headers.get("content-type", "audio/wav")
    take = await run_in_threadpool(studio.record, prompt_id, data, ctype)
    return TakeOut(take=take, progress=await run_in_threadpool(studio.session.progress))


@router.post("/takes/{take_id}/decision", response_model=TakeOut)
def decide(take_id: str, body: Decision, studio: Studio = Depends(get_studio)) -> TakeOut:
    """Keep the take, or mark it to redo."""
    try:
        take = studio.session.decide(take_id, body.keep)
    except KeyError:
        raise HTTPException(404, f"take {take_id!r}: not in this session") from None
    return TakeOut(take=take, progress=studio.session.progress())


@router.get("/takes/{take_id}", response_model=TakeOut)
def get_take(take_id: str, studio: Studio = Depends(get_studio)) -> TakeOut:
    """One take (poll it while `checking`)."""
    take = studio.session.take(take_id)
    if take is None:
        raise HTTPException(404, f"take {take_id!r}: not in this session")
    return TakeOut(take=take, progress=studio.session.progress())


@router.get("/takes/{take_id}/audio")
def take_audio(take_id: str, studio: Studio = Depends(get_studio)) -> Response:
    """The take's audio as recorded."""
    take = studio.session.take(take_id)
    if take is None:
        raise HTTPException(404, f"take {take_id!r}: not in this session")
    return Response(studio.store.get_bytes(take.audio_sha), media_type=take.content_type)


@router.get("/progress")
def progress(studio: Studio = Depends(get_studio)) -> dict:
    """Minutes kept of the target, prompts done, phoneme coverage."""
    return studio.session.progress()
