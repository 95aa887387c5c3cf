"""`retrain_check`: rebuild each known speaker's corpus from its feed; a new episode -> new version -> event."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.prefect import corpus_params

pytestmark = pytest.mark.slow


def test_retrain_check_acts_only_on_a_changed_feed(prefect_api, prefect_podcast, reference_corpus,
                                                   tmp_path: Path) -> None:
    from flows.corpus import build_corpus
    from flows.retrain import retrain_check
    from tasks.events import CORPUS_CHANGED, corpus_resource_id
    from voicepipe.corpus.config import CorpusParams
    from voicepipe.corpus.synthetic import feed_items, write_feed
    from voicepipe.store import open_store

    truth = prefect_podcast["truth"]
    base_url = prefect_podcast["feed"].rsplit("/", 1)[0]
    feed = truth.dir / "retrain-feed.xml"  # a second feed on the same loopback server, two episodes for now
    write_feed(feed, feed_items(truth, base_url, truth.episodes[:2]))
    # the reference build's store: its per-step memo makes already-seen episodes cache hits
    store_url = f"file://{reference_corpus['dir'].parent / 'store'}"
    params = corpus_params(prefect_podcast, "retrainspeaker", store_url, tmp_path / "corpus",
                           feeds=[f"{base_url}/{feed.name}"])
    first = build_corpus(CorpusParams(**params))
    assert first["changed"] is True and first["episodes_ok"] == 2
    store = open_store(store_url)

    # 1. unchanged feed: same version, nothing to retrain, no second event
    rows = retrain_check(speakers=["RetrainSpeaker"], store_url=store_url)
    assert rows == [{"speaker": "retrainspeaker", "before": first["version"], "after": first["version"],
                     "changed": False, "action": "unchanged"}]

    # 2. the feed publishes a third episode: new version, event emitted, the trigger will retrain
    write_feed(feed, feed_items(truth, base_url, truth.episodes))
    rows = retrain_check(speakers=["retrainspeaker"], store_url=store_url)
    assert len(rows) == 1 and rows[0]["changed"] is True and rows[0]["before"] == first["version"]
    new_version = rows[0]["after"]
    assert new_version != first["version"]
    assert rows[0]["action"] == "retrain via voicepipe.corpus.changed trigger"
    assert store.get_ref("corpus/retrainspeaker/latest")["extra"]["version"] == new_version

    evs = prefect_api.wait_events(CORPUS_CHANGED, 2, corpus_resource_id("retrainspeaker"))
    assert [e["payload"]["version"] for e in evs] == [first["version"], new_version]
