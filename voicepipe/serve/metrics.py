"""Prometheus metrics of one server instance (own registry, so several apps can live in one process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """Requests, time to first audio, real-time factor, audio produced, queue depth and active streams."""

    def __init__(self, queue_depth: Callable[[], float], active: Callable[[], float]):
        self.registry = CollectorRegistry()
        self.requests = Counter("voicepipe_tts_requests_total", "Speech requests by outcome.",
                                ["voice", "format", "stream", "status"], registry=self.registry)  # fmt: skip
        self.ttfa = Histogram("voicepipe_tts_ttfa_seconds", "Time from request to the first audio bytes.",
                              buckets=(0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10),
                              registry=self.registry)  # fmt: skip
        self.rtf = Histogram("voicepipe_tts_rtf", "Wall time / audio duration per request (below 1: faster than "
                             "real time).", buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5, 10),
                             registry=self.registry)  # fmt: skip
        self.audio_seconds = Counter("voicepipe_tts_audio_seconds_total", "Audio produced.", ["voice"],
                                     registry=self.registry)  # fmt: skip
        self.queue = Gauge("voicepipe_tts_queue_depth", "Requests waiting for a generation slot.",
                           registry=self.registry)  # fmt: skip
        self.queue.set_function(queue_depth)
        self.active = Gauge("voicepipe_tts_active_streams", "Requests generating now.", registry=self.registry)
        self.active.set_function(active)
