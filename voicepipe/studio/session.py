"""A speaker's recording session, kept in the artifact store so it can be resumed on another day or machine.

    ref  studio/<speaker>/<session>  ->  session document (JSON object, step `studio.session`)
    each take                        ->  its audio bytes as recorded (step `studio.take`, params: prompt text ...)
    the script                       ->  its text (step `studio.script`)

Every change writes a new session document and moves the ref (the ref's log keeps every earlier version), so
nothing recorded is ever overwritten. A change always starts from the ref's current document, so two machines
working on one session in turn (or a restarted server) see each other's takes.
"""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from voicepipe.errors import InputError
from voicepipe.studio.script import Script, coverage, load_script, parse_script

FORMAT = "voicepipe.studio/v1"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
PAD_S = 0.15  # silence the corpus keeps around a take's speech (the corpus build's default `pad_s`)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def check_name(value: str, what: str) -> str:
    """A speaker or session name: lower-case letters, digits, '_', '.', '-' (it becomes part of a store ref)."""
    v = (value or "").strip().lower()
    if not _NAME_RE.match(v):
        raise InputError(f"{what} {value!r}: use 1-64 lower-case letters, digits, '_', '.' or '-' "
                         "(starting with a letter or digit)")
    return v


def session_ref(speaker: str, session: str) -> str:
    """The store ref naming a session: `studio/<speaker>/<session>`."""
    return f"studio/{check_name(speaker, 'speaker')}/{check_name(session, 'session')}"


class Take(BaseModel):
    """One recording of one prompt."""

    id: str
    prompt_id: str
    prompt_index: int
    text: str
    n: int = Field(..., description="Take number of this prompt (1, 2, ...).")
    audio_sha: str
    content_type: str = "audio/wav"
    sr: int
    seconds: float
    speech_start_s: float | None = None
    speech_end_s: float | None = None
    status: Literal["pending", "kept", "redo"] = "pending"
    verdict: Literal["keep", "redo"] = "keep"
    checking: bool = Field(False, description="The slower checks (words, DNSMOS) are still running.")
    issues: list[dict[str, str]] = Field(default_factory=list)
    measures: dict[str, Any] = Field(default_factory=dict)
    created: str = Field(default_factory=_now)
    decided: str | None = None

    @property
    def usable_s(self) -> float:
        """Seconds this take brings to a corpus: its speech span plus the corpus padding."""
        if self.speech_start_s is None or self.speech_end_s is None:
            return self.seconds
        return min(self.seconds, self.speech_end_s - self.speech_start_s + 2 * PAD_S)


class SessionDoc(BaseModel):
    """The stored session document."""

    format: str = FORMAT
    speaker: str
    session: str
    language: str = "en-us"
    target_minutes: float = 45.0
    script_sha: str
    script_name: str = "script"
    takes: list[Take] = Field(default_factory=list)
    created: str = Field(default_factory=_now)
    updated: str = Field(default_factory=_now)


def read_session(store: Any, speaker: str, session: str) -> SessionDoc | None:
    """The session's current document, or None when it was never recorded."""
    ref = store.get_ref(session_ref(speaker, session))
    if ref is None:
        return None
    doc = store.get_json(ref["sha"])
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InputError(f"studio session {speaker}/{session}: the ref points at something that is not a session "
                         f"document (format {doc.get('format') if isinstance(doc, dict) else type(doc).__name__})")
    return SessionDoc.model_validate(doc)


def list_sessions(store: Any, speaker: str | None = None) -> list[str]:
    """`speaker/session` of every studio session in the store (of one speaker if given)."""
    prefix = f"studio/{check_name(speaker, 'speaker')}/" if speaker else "studio/"
    return [r["name"].removeprefix("studio/") for r in store.list_refs(prefix)]


class StudioSession:
    """One speaker's session: the script, the takes and their decisions, all kept in `store`."""

    def __init__(self, store: Any, speaker: str, session: str = "main", *, script: Script | None = None,
                 language: str | None = None, target_minutes: float | None = None) -> None:
        self.store = store
        self.speaker = check_name(speaker, "speaker")
        self.session = check_name(session, "session")
        self.ref = session_ref(self.speaker, self.session)
        self._lock = threading.Lock()
        doc = read_session(store, self.speaker, self.session)
        if doc is None:  # a new session: the given script, or the default one
            script = script or load_script(language=language or "en-us")
            doc = SessionDoc(speaker=self.speaker, session=self.session, language=language or script.language,
                             target_minutes=target_minutes or 45.0, script_sha=self._put_script(script),
                             script_name=script.name)
        else:
            if script is not None:  # a new script for an existing session: takes of its old prompts stay
                doc.script_sha, doc.script_name = self._put_script(script), script.name
            if language:
                doc.language = language
            if target_minutes:
                doc.target_minutes = target_minutes
        self.script = script or parse_script(store.get_bytes(doc.script_sha).decode("utf-8"), doc.script_name)
        self.script.language = doc.language
        self.doc = doc
        self._save(doc)

    # ---- store
    def _put_script(self, script: Script) -> str:
        return self.store.put_bytes(script.text.encode("utf-8"), step="studio.script", name=script.name,
                                    params={"speaker": self.speaker, "session": self.session},
                                    content_type="text/plain; charset=utf-8").sha256

    def _save(self, doc: SessionDoc) -> None:
        doc.updated = _now()
        ref = self.store.put_json(doc.model_dump(mode="json"), step="studio.session",
                                  name=f"studio-{self.speaker}-{self.session}.json",
                                  inputs=[doc.script_sha, *sorted({t.audio_sha for t in doc.takes})],
                                  params={"speaker": self.speaker, "session": self.session})
        self.store.set_ref(self.ref, ref.sha256, {"takes": len(doc.takes), "kept": sum(
            t.status == "kept" for t in doc.takes)})
        self.doc = doc

    def _latest(self) -> SessionDoc:
        """The ref's current document (another machine may have recorded since), with this process's settings."""
        doc = read_session(self.store, self.speaker, self.session) or self.doc
        if doc.script_sha != self.doc.script_sha:  # this process was started with a new script: keep it
            doc.script_sha, doc.script_name = self.doc.script_sha, self.doc.script_name
        doc.language, doc.target_minutes = self.doc.language, self.doc.target_minutes
        return doc

    # ---- takes
    def add_take(self, prompt_id: str, audio: bytes, *, sr: int, seconds: float, check: dict[str, Any],
                 content_type: str = "audio/wav", checking: bool = False) -> Take:
        """Store a take of `prompt_id` with its check results (status `pending` until keep/redo; an earlier take
        of the prompt still pending becomes `redo`). Uploading the same bytes again (a retried upload) returns the
        take already stored."""
        prompt = self.script.by_id().get(prompt_id)
        if prompt is None:
            raise InputError(f"take: prompt {prompt_id!r} is not in the script {self.script.name}")
        with self._lock:
            doc = self._latest()
            ext = "wav" if "wav" in content_type else content_type.split("/")[-1].split(";")[0] or "bin"
            n = 1 + sum(t.prompt_id == prompt_id for t in doc.takes)
            take_id = f"{prompt.index + 1:04d}-{prompt_id[:8]}-{n}"
            sha = self.store.put_bytes(audio, step="studio.take", name=f"{take_id}.{ext}", content_type=content_type,
                                       params={"speaker": self.speaker, "session": self.session,
                                               "prompt_id": prompt_id, "text": prompt.text, "take": n}).sha256
            for t in doc.takes:
                if t.audio_sha == sha:
                    return t
            for t in doc.takes:  # recording a prompt again, undecided: that is a redo of the earlier take
                if t.prompt_id == prompt_id and t.status == "pending":
                    t.status, t.decided = "redo", _now()
            m = check.get("measures", {})
            take = Take(id=take_id, prompt_id=prompt_id, prompt_index=prompt.index, text=prompt.text, n=n,
                        audio_sha=sha, content_type=content_type, sr=sr, seconds=round(seconds, 3),
                        speech_start_s=m.get("speech_start_s"), speech_end_s=m.get("speech_end_s"),
                        verdict=check.get("verdict", "keep"), issues=check.get("issues", []), measures=m,
                        checking=checking)
            doc.takes.append(take)
            self._save(doc)
            return take

    def update_checks(self, take_id: str, check: dict[str, Any] | None) -> Take | None:
        """Record the full checks of a take (None: they failed; the fast checks stand) and end `checking`."""
        with self._lock:
            doc = self._latest()
            take = next((t for t in doc.takes if t.id == take_id), None)
            if take is None:
                return None
            if check is not None:
                take.verdict, take.issues, take.measures = check["verdict"], check["issues"], check["measures"]
            take.checking = False
            self._save(doc)
            return take

    def decide(self, take_id: str, keep: bool) -> Take:
        """Keep a take (any earlier kept take of the same prompt goes back to `redo`) or mark it `redo`."""
        with self._lock:
            doc = self._latest()
            take = next((t for t in doc.takes if t.id == take_id), None)
            if take is None:
                raise KeyError(take_id)
            if keep:
                for t in doc.takes:
                    if t.prompt_id == take.prompt_id and t.status == "kept" and t.id != take.id:
                        t.status, t.decided = "redo", _now()
            take.status, take.decided = ("kept" if keep else "redo"), _now()
            self._save(doc)
            return take

    def take(self, take_id: str) -> Take | None:
        return next((t for t in self._latest().takes if t.id == take_id), None)

    def kept(self) -> list[Take]:
        """The kept takes in script order (the corpus build's input)."""
        return sorted((t for t in self._latest().takes if t.status == "kept"), key=lambda t: (t.prompt_index, t.n))

    def progress(self) -> dict[str, Any]:
        """Minutes kept vs the target, minutes recorded, prompts done, phoneme/diphone coverage of kept takes."""
        doc = self._latest()
        self.doc = doc
        kept = [t for t in doc.takes if t.status == "kept"]
        in_script = self.script.by_id()
        done = {t.prompt_id for t in kept if t.prompt_id in in_script}
        return {
            "kept_minutes": round(sum(t.usable_s for t in kept) / 60, 2),
            "recorded_minutes": round(sum(t.seconds for t in doc.takes) / 60, 2),
            "target_minutes": doc.target_minutes,
            "takes": len(doc.takes), "kept": len(kept), "redo": sum(t.status == "redo" for t in doc.takes),
            "pending": sum(t.status == "pending" for t in doc.takes),
            "prompts_done": len(done), "prompts_total": len(self.script.prompts),
            "coverage": coverage(self.script, sorted(done)),
        }
