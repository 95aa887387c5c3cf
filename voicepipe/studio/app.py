"""`create_app(studio)`: the recording studio's FastAPI app: the page (plain HTML/JS in `static/`) and its API."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from voicepipe.errors import InputError, VoicepipeError
from voicepipe.studio import routes
from voicepipe.studio.deps import Studio

STATIC = Path(__file__).with_name("static")
log = logging.getLogger(__name__)


def create_app(studio: Studio) -> FastAPI:
    """The app serving `studio` (one speaker's session)."""
    app = FastAPI(title="voicepipe studio", version="0.1.0",
                  description="Record a scripted voice corpus, checked take by take.")
    app.state.studio = studio
    app.include_router(routes.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    @app.exception_handler(InputError)
    async def _bad_input(_: Request, e: InputError) -> JSONResponse:
        return JSONResponse({"error": str(e)}, status_code=400)

    @app.exception_handler(VoicepipeError)
    async def _failed(_: Request, e: VoicepipeError) -> JSONResponse:
        return JSONResponse({"error": str(e)}, status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code)

    return app
