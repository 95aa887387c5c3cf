"""voicepipe.corpus: podcast feed -> clean, transcribed, codec-encoded single-speaker corpus.

    params = CorpusParams(speaker="will", enroll=["ref.wav"], feeds=[url], out="corpus/")
    flows.corpus.build_corpus(params)      # the production path (CLI: `voicepipe corpus build`)
    build_local(params)                    # the same step functions without Prefect
    truth = make_podcast(dir); url, stop = serve_feed(dir); score_corpus(out, truth)   # synthetic test podcast

Heavy modules load lazily, so `import voicepipe.corpus` stays cheap for the CLI.
"""

from typing import Any

from voicepipe.corpus.config import CorpusParams, FilterConfig

_LAZY = {
    "build_local": "voicepipe.corpus.build",
    "list_sources": "voicepipe.corpus.build",
    "process_episode": "voicepipe.corpus.steps",
    "EpisodeState": "voicepipe.corpus.steps",
    "BuildResult": "voicepipe.corpus.assemble",
    "make_podcast": "voicepipe.corpus.synthetic",
    "make_scenario_podcast": "voicepipe.corpus.synthetic",
    "serve_feed": "voicepipe.corpus.synthetic",
    "score_corpus": "voicepipe.corpus.synthetic",
    "PodcastTruth": "voicepipe.corpus.synthetic",
}

__all__ = ["CorpusParams", "FilterConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'voicepipe.corpus' has no attribute {name!r}")
