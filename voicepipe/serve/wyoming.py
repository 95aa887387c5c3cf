"""The Wyoming protocol (Home Assistant's) for the same voices and engines as the HTTP API, in the same process.

Home Assistant adds it as a Wyoming integration at `host:port` (default port 10200), or finds it by itself when
the server announces itself over zeroconf (`--wyoming-zeroconf NAME`, needs the `zeroconf` package). Events, as
the `wyoming` package defines them:

- `describe` -> `info`: one TTS program "voicepipe" with every loaded voice and its languages;
  `supports_synthesize_streaming` is true;
- `synthesize` -> `audio-start`, `audio-chunk`... (16-bit mono PCM at 24 kHz, sent as the engine makes it),
  `audio-stop`;
- `synthesize-start`, `synthesize-chunk`..., `synthesize-stop` (text streamed from an LLM): each sentence is spoken
  as soon as it is complete (one `audio-start`/`-chunk`/`-stop` cycle per sentence, as wyoming-piper does), then
  `synthesize-stopped`. A `synthesize` event inside such a stream is the client's fallback copy and is ignored.

Failures are `error` events (code `invalid_text`, `unknown_voice`, `server_busy`, ...); the connection stays up.
Requests share the HTTP server's queue cap and slots, and are counted in its metrics (format "pcm", stream
"wyoming").
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any

from sentence_stream import SentenceBoundaryDetector
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Attribution, Describe, Info, TtsProgram, TtsVoice
from wyoming.server import AsyncEventHandler, AsyncServer
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped, SynthesizeVoice

from voicepipe.audio.formats import to_pcm16
from voicepipe.serve.deps import ApiError, ServerState
from voicepipe.serve.registry import Voice
from voicepipe.serve.synth import SpeechJob, check_text

log = logging.getLogger(__name__)

_ATTRIBUTION = Attribution(name="voicepipe", url="https://github.com/QwenLM/Qwen3-TTS")
WIDTH, CHANNELS = 2, 1


def _language_codes(voice: Voice) -> list[str]:
    """Languages as Home Assistant lists them: the model's language names ("english"), plus "auto"."""
    return [lang for lang in voice.languages if lang != "auto"] or ["auto"]


def describe(state: ServerState) -> Info:
    """The `info` answer: one TTS program with every loaded voice."""
    voices = [
        TtsVoice(name=v.name, description=f"voicepipe voice {v.name} ({v.source})", attribution=_ATTRIBUTION,
                 installed=True, version=None, languages=_language_codes(v))  # fmt: skip
        for v in state.voices.values()
    ]
    program = TtsProgram(name="voicepipe", description="voicepipe: a fine-tuned Qwen3-TTS voice, streamed",
                         attribution=_ATTRIBUTION, installed=True, version="0.1.0", voices=voices,
                         supports_synthesize_streaming=True)  # fmt: skip
    return Info(tts=[program])


class VoicepipeEventHandler(AsyncEventHandler):
    """One Wyoming client connection."""

    def __init__(self, state: ServerState, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.state = state
        self.streaming = False
        self.sbd = SentenceBoundaryDetector()
        self.stream_voice: SynthesizeVoice | None = None
        self.sentences: asyncio.Queue[str | None] | None = None
        self.speaker_task: asyncio.Task | None = None
        self.job: SpeechJob | None = None

    async def run(self) -> None:
        """The library's event loop; a client that hangs up or sends garbage ends only its own connection."""
        try:
            await super().run()
        except (ConnectionError, asyncio.IncompleteReadError) as e:
            log.info("wyoming client went away: %s", type(e).__name__)
        except Exception as e:  # noqa: BLE001 - a peer sending garbage loses its connection, nothing more
            log.warning("wyoming connection closed: %s: %s", type(e).__name__, e)

    # ---------------------------------------------------------------- events
    async def handle_event(self, event: Event) -> bool:
        if Describe.is_type(event.type):
            await self.write_event(describe(self.state).event())
            return True
        if Synthesize.is_type(event.type):
            if self.streaming:
                return True  # the fallback copy of a streamed text: already being spoken
            syn = Synthesize.from_event(event)
            await self._speak(syn.text, syn.voice, cycle=True)
            return True
        if SynthesizeStart.is_type(event.type):
            start = SynthesizeStart.from_event(event)
            await self._end_stream(send_stopped=False)  # a new stream replaces an unfinished one
            self.streaming, self.stream_voice, self.sbd = True, start.voice, SentenceBoundaryDetector()
            self.sentences = asyncio.Queue()
            self.speaker_task = asyncio.create_task(self._speak_stream(self.sentences, start.voice))
            return True
        if SynthesizeChunk.is_type(event.type):
            if not self.streaming or self.sentences is None:
                await self._error("synthesize-chunk outside synthesize-start/-stop", "protocol_error")
                return True
            for sentence in self.sbd.add_chunk(SynthesizeChunk.from_event(event).text):
                self.sentences.put_nowait(sentence)
            return True
        if SynthesizeStop.is_type(event.type):
            if self.streaming and self.sentences is not None:
                rest = self.sbd.finish()
                if rest:
                    self.sentences.put_nowait(rest)
            await self._end_stream(send_stopped=True)
            return True
        return True  # other events (ping is answered by the library): ignored

    async def disconnect(self) -> None:
        if self.job is not None:
            self.job.cancel()
        if self.speaker_task is not None:
            self.speaker_task.cancel()

    # ---------------------------------------------------------------- speaking
    async def _end_stream(self, send_stopped: bool) -> None:
        task, queue = self.speaker_task, self.sentences
        self.streaming, self.speaker_task, self.sentences = False, None, None
        if task is not None and queue is not None:
            queue.put_nowait(None)
            if send_stopped:
                await task
            else:
                task.cancel()
        if send_stopped:
            await self.write_event(SynthesizeStopped().event())

    async def _speak_stream(self, sentences: asyncio.Queue[str | None], voice: SynthesizeVoice | None) -> None:
        while (sentence := await sentences.get()) is not None:
            await self._speak(sentence, voice, cycle=True)

    def _voice(self, requested: SynthesizeVoice | None) -> tuple[Voice, str]:
        voices = self.state.voices
        if not voices:
            raise ApiError(503, "no voice loaded", type="server_busy", code="not_ready")
        name = requested.name if requested is not None else None
        if name:
            voice = voices.get(name) or voices.get(name.lower())
            if voice is None:
                raise ApiError(400, f"voice {name!r}: unknown (available: {', '.join(sorted(voices))})",
                               param="voice", code="unknown_voice")  # fmt: skip
        else:
            voice = next(iter(voices.values()))
        lang = ((requested.language if requested is not None else None) or self.state.config.language).lower()
        return voice, (lang if lang in voice.languages else "auto")

    async def _speak(self, text: str, requested: SynthesizeVoice | None, cycle: bool) -> None:
        """Speak `text` as one audio-start/-chunk/-stop cycle; failures become an `error` event."""
        status, voice_name = "cancelled", "-"
        job: SpeechJob | None = None
        started = False
        try:
            voice, lang = self._voice(requested)
            voice_name = voice.name
            check_text(text, "text", self.state.config.max_input_chars)
            if not text.strip():
                if cycle:  # nothing to say: an empty cycle keeps clients that wait for audio-stop going
                    await self._audio_start(voice)
                    await self.write_event(AudioStop().event())
                status = "ok"
                return
            job = self.job = SpeechJob(voice, self.state, text, language=lang)
            await job.start()
            sr = voice.engine.sample_rate
            async for chunk in job.chunks():
                if not started:
                    await self._audio_start(voice)
                    started = True
                    if self.state.metrics is not None:
                        self.state.metrics.ttfa.observe(job.first_audio_at - job.t0)
                await self.write_event(AudioChunk(rate=sr, width=WIDTH, channels=CHANNELS,
                                                  audio=to_pcm16(chunk)).event())  # fmt: skip
            if not started:
                await self._audio_start(voice)
            await self.write_event(AudioStop().event())
            status = "ok"
        except ApiError as e:
            status = str(e.status)
            await self._error(e.message, e.code or e.type)
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as e:  # noqa: BLE001 - report, keep the connection
            status = "error"
            log.exception("wyoming synthesis failed")
            await self._error(f"synthesis failed: {e}", "synthesis_failed")
        finally:
            if job is not None:
                job.cancel()
            self.job = None
            m = self.state.metrics
            if m is not None:
                if job is not None and status in ("ok", "error", "cancelled"):
                    job.observe(status, "pcm", "wyoming")
                else:
                    m.requests.labels(voice_name, "pcm", "wyoming", status).inc()

    async def _audio_start(self, voice: Voice) -> None:
        await self.write_event(AudioStart(rate=voice.engine.sample_rate, width=WIDTH, channels=CHANNELS).event())

    async def _error(self, text: str, code: str | None) -> None:
        try:
            await self.write_event(Error(text=text, code=code).event())
        except ConnectionError:
            pass


class WyomingServer:
    """The Wyoming TCP server of an app's `ServerState`, running on the app's event loop."""

    def __init__(self, state: ServerState, uri: str, zeroconf_name: str | None = None):
        self.state, self.uri, self.zeroconf_name = state, uri, zeroconf_name
        self.server = AsyncServer.from_uri(uri)
        self._task: asyncio.Task | None = None

    async def start(self) -> WyomingServer:
        """Bind and serve in the background; announce over zeroconf when asked."""
        await self.server.start(partial(VoicepipeEventHandler, self.state))
        log.info("Wyoming server on %s (voices: %s)", self.uri, ", ".join(sorted(self.state.voices)))
        if self.zeroconf_name:
            await self._announce()
        return self

    async def _announce(self) -> None:
        from urllib.parse import urlparse

        try:
            from wyoming.zeroconf import HomeAssistantZeroconf
        except ImportError as e:
            from voicepipe.errors import ConfigError

            raise ConfigError("--wyoming-zeroconf needs the `zeroconf` package (pip install zeroconf)") from e
        parsed = urlparse(self.uri)
        host = parsed.hostname if parsed.hostname not in (None, "0.0.0.0", "::") else None
        zc = HomeAssistantZeroconf(port=parsed.port or 10200, name=self.zeroconf_name, host=host)
        await zc.register_server()
        log.info("Wyoming server announced over zeroconf as %s", self.zeroconf_name)

    @property
    def port(self) -> int:
        """The bound TCP port (useful with tcp://HOST:0)."""
        return self.server._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        """Close client connections (cancelling their requests) and the listening socket."""
        await self.server.stop()
