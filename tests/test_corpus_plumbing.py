"""Plumbing of the production model paths with TINY RANDOM real-architecture models (no meaning is tested):
Demucs separation (HTDemucs via `apply_model`), the pyannote.audio 4 pipeline, Whisper through transformers,
the 12 Hz codec; plus a local-folder source. Also unit tests of the step helpers on real signals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from voicepipe.audio import load_audio, load_audio_checked, loudness_lufs, normalize_loudness, save_wav
from voicepipe.corpus.build import build_local
from voicepipe.corpus.config import CorpusParams
from voicepipe.corpus.fetch import EpisodeSource, download
from voicepipe.corpus.intervals import intersect, subtract, union
from voicepipe.errors import InputError
from voicepipe.store import open_store


def test_separation_and_pyannote_paths_run_with_tiny_models(
    synthetic_podcast, corpus_params_base, tiny_demucs_dir, tiny_diarization_dir, tmp_path
):
    """Plumbing only: random weights. Also covers a local-folder source (a 12 s wav cut from an episode)."""
    src = tmp_path / "folder"
    wav = load_audio(synthetic_podcast.truth.dir / synthetic_podcast.truth.episodes[0].file)[: 24000 * 12]
    save_wav(src / "ep.wav", wav, 24000)
    params = CorpusParams(**{
        **corpus_params_base, "separate": True, "demucs_model": str(tiny_demucs_dir),
        "diarization_model": str(tiny_diarization_dir), "sources": [str(src)], "out": str(tmp_path / "out"),
        "store_url": str(tmp_path / "store"), "min_keep_fraction": 0.0,  # random models keep nothing: plumbing only
    })
    res = build_local(params, progress=False)
    assert {"separator", "diarizer"} <= set(res.models_loaded)
    assert res.cache["separate"] == {"hit": 0, "miss": 1, "skip": 0}
    assert res.episodes_ok == 1 and abs(res.audio_seconds - 12.0) < 0.1
    store = open_store(params.store_url)
    std_memo = [m for m in (tmp_path / "store").rglob("memo/corpus.standardize/*")]
    sep_memo = [m for m in (tmp_path / "store").rglob("memo/corpus.separate/*")]
    std = store.get_json(json.loads(std_memo[0].read_text())["sha"])
    sep = store.get_json(json.loads(sep_memo[0].read_text())["sha"])
    assert sep["separated"] and sep["sha"] != std["sha"]
    vocals = load_audio(store.get_file(sep["sha"], tmp_path / "v.flac"))
    assert abs(vocals.size - 24000 * 12) < 240 and np.isfinite(vocals).all()
    assert store.meta(sep["sha"])["inputs"] == [std["sha"]]
    dia_memo = [m for m in (tmp_path / "store").rglob("memo/corpus.diarize/*")]
    assert store.get_json(json.loads(dia_memo[0].read_text())["sha"])["backend"] == "pyannote"


def test_whisper_backend_runs_with_a_tiny_model(tiny_whisper_dir):
    """Plumbing only: a random Whisper gives junk text, but text + a confidence in [0, 1] come back per segment."""
    from voicepipe.corpus.engines import Asr

    asr = Asr("whisper", str(tiny_whisper_dir))
    rng = np.random.default_rng(0)
    out = asr.transcribe([0.1 * rng.standard_normal(16000).astype(np.float32) for _ in range(2)])
    assert len(out) == 2 and all(isinstance(t, str) and 0.0 <= c <= 1.0 for t, c in out)


def test_truncated_mp3_is_detected_and_whole_one_is_not(synthetic_podcast, tmp_path):
    good = synthetic_podcast.truth.dir / synthetic_podcast.truth.episodes[0].file
    assert load_audio_checked(good).size > 24000 * 30
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputError, match="truncated audio"):
        load_audio_checked(cut)
    (tmp_path / "zero.mp3").write_bytes(b"")
    with pytest.raises(InputError, match="empty file"):
        load_audio(tmp_path / "zero.mp3")


def test_download_stops_at_the_size_limit_and_refuses_html(synthetic_podcast, tmp_path):
    base = synthetic_podcast.base_url
    ep = synthetic_podcast.truth.episodes[0]
    ok = download(EpisodeSource(id="a", url=f"{base}/{ep.file}"), tmp_path / "a.mp3", max_bytes=10**8)
    assert ok.read_bytes() == (synthetic_podcast.truth.dir / ep.file).read_bytes()
    with pytest.raises(InputError, match="over the size limit"):
        download(EpisodeSource(id="b", url=f"{base}/{ep.file}"), tmp_path / "b.mp3", max_bytes=1000)
    assert not (tmp_path / "b.mp3.part").exists()
    (synthetic_podcast.truth.dir / "page.mp3").write_text("<html><body>not audio</body></html>")
    with pytest.raises(InputError, match="HTML page"):
        download(EpisodeSource(id="c", url=f"{base}/page.mp3"), tmp_path / "c.mp3", max_bytes=10**8)


def test_loudness_normalization_hits_target_without_clipping():
    rng = np.random.default_rng(0)
    wav = (0.01 * rng.standard_normal(24000 * 3)).astype(np.float32)
    out, gain = normalize_loudness(wav, 24000, -23.0)
    assert abs(loudness_lufs(out, 24000) + 23.0) < 0.5 and gain > 1
    loud = np.sign(rng.standard_normal(24000 * 3)).astype(np.float32) * 0.9
    out, _ = normalize_loudness(loud, 24000, -5.0)
    assert np.max(np.abs(out)) <= 0.95 + 1e-6


def test_interval_helpers():
    assert intersect([(0, 5), (6, 10)], [(4, 7)]) == [(4, 5), (6, 7)]
    assert subtract([(0, 10)], [(2, 3), (5, 6)]) == [(0, 2), (3, 5), (6, 10)]
    assert union([(0, 2), (1, 3), (5, 6)]) == [(0, 3), (5, 6)]


def test_save_and_load_roundtrip(tmp_path):
    wav = np.sin(np.linspace(0, 200 * np.pi, 24000)).astype(np.float32) * 0.5
    p = save_wav(tmp_path / "x.wav", wav, 24000)
    back = load_audio(p, 24000)
    assert back.shape == wav.shape and np.max(np.abs(back - wav)) < 1e-3


def test_s3_prefix_source_lists_and_downloads(s3_server, s3_settings, synthetic_podcast, tmp_path):
    from tests.fixtures.store import raw_s3_client
    from voicepipe.corpus.fetch import list_s3

    client = raw_s3_client(s3_server)
    bucket = "corpus-src"
    client.create_bucket(Bucket=bucket)
    ep = synthetic_podcast.truth.dir / synthetic_podcast.truth.episodes[0].file
    client.upload_file(str(ep), bucket, "show/2026/ep1.mp3")
    client.put_object(Bucket=bucket, Key="show/2026/notes.txt", Body=b"not audio")
    eps = list_s3(f"s3://{bucket}/show/", s3_settings)
    assert [e.url for e in eps] == [f"s3://{bucket}/show/2026/ep1.mp3"]
    got = download(eps[0], tmp_path / "ep1.mp3", max_bytes=10**8, settings=s3_settings)
    assert got.read_bytes() == ep.read_bytes()
    with pytest.raises(InputError, match="over the size limit"):
        download(eps[0], tmp_path / "x.mp3", max_bytes=1000, settings=s3_settings)


def test_select_applies_date_range_and_cap():
    from datetime import date

    from voicepipe.corpus.fetch import select

    eps = [EpisodeSource(id=f"e{i}", url=f"http://x/{i}.mp3", published=f"2026-01-{i + 1:02d}") for i in range(5)]
    assert [e.id for e in select(eps, since=date(2026, 1, 2), until=date(2026, 1, 4), max_episodes=None)] == [
        "e1", "e2", "e3"]
    assert [e.id for e in select(eps, since=None, until=None, max_episodes=2)] == ["e4", "e3"]


def test_episodes_whose_long_guids_differ_only_at_the_end_keep_distinct_ids(tmp_path):
    """Feeds often use an episode's page URL as its guid; two parts of one episode differ in the last characters.
    Their ids (at most 80 characters, file-safe) must differ, or the build keeps only the first as a duplicate."""
    from voicepipe.corpus.fetch import list_feed

    base = "https://podcasts.example-network.com/shows/the-long-running-show-about-everything/episodes/2026/12/"
    items = "".join(f'<item><title>part {i}</title><guid>{base}episode-412-a-very-long-title-part-{i}</guid>'
                    f'<enclosure url="https://cdn.example.com/{i}.mp3" type="audio/mpeg" length="1"/></item>'
                    for i in (1, 2))
    short = ('<item><title>short</title><guid>ep-7</guid>'
             '<enclosure url="https://cdn.example.com/7.mp3" type="audio/mpeg" length="1"/></item>')
    feed = tmp_path / "feed.xml"
    feed.write_text(f'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>{items}{short}'
                    "</channel></rss>")
    ids = [e.id for e in list_feed(str(feed))]
    assert len(ids) == 3 and len(set(ids)) == 3, ids
    assert all(len(i) <= 80 and "/" not in i for i in ids), ids
    assert ids[2] == "ep-7"  # short guids keep their readable id
    assert [e.id for e in list_feed(str(feed))] == ids  # stable across listings


def test_the_audio_enclosure_is_taken_when_a_feed_lists_cover_art_or_several_formats(tmp_path):
    """An Atom feed's entry may link cover art as an enclosure before the audio, or the same episode as video and
    audio; the episode is its audio. An entry with only an image has no episode (its feed's other entries do); a
    generic binary type from a tracking URL without an extension is still taken (its download says what it is)."""
    from voicepipe.corpus.fetch import list_feed

    def link(href: str, typ: str) -> str:
        return f'<link rel="enclosure" href="{href}" type="{typ}" length="1"/>'

    entries = [("art-first", link("https://cdn.example.com/a.jpg", "image/jpeg")
                + link("https://cdn.example.com/a.mp3", "audio/mpeg")),
               ("video-and-audio", link("https://cdn.example.com/b.mp4", "video/mp4")
                + link("https://cdn.example.com/b.m4a", "audio/x-m4a")),
               ("untyped", link("https://cdn.example.com/cover.png", "") + link("https://cdn.example.com/c.ogg", "")),
               ("image-only", link("https://cdn.example.com/d.jpg", "image/jpeg")),
               ("octet-stream", link("https://cdn.example.com/e.jpg", "image/jpeg")
                + link("https://track.example.com/play?id=5", "application/octet-stream"))]
    body = "".join(f"<entry><id>{i}</id><title>{i}</title><updated>2026-12-01T00:00:00Z</updated>{links}</entry>"
                   for i, links in entries)
    feed = tmp_path / "feed.atom"
    feed.write_text(f'<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><title>t</title>'
                    f"<id>f</id><updated>2026-12-01T00:00:00Z</updated>{body}</feed>")
    got = {e.id: e.url for e in list_feed(str(feed))}
    assert got == {"art-first": "https://cdn.example.com/a.mp3", "video-and-audio": "https://cdn.example.com/b.m4a",
                   "untyped": "https://cdn.example.com/c.ogg",
                   "octet-stream": "https://track.example.com/play?id=5"}, got


def test_pocketsphinx_transcript_does_not_depend_on_what_was_decoded_before(synthetic_podcast):
    """One long-lived recogniser serves a whole build: a clip's text and confidence must be the same whatever it
    decoded before (else a corpus version depends on episode order and worker scheduling)."""
    from voicepipe.corpus.engines import Asr

    wav = load_audio(synthetic_podcast.truth.dir / synthetic_podcast.truth.episodes[0].file, 16000)
    a, b = wav[2 * 16000 : 8 * 16000], wav[20 * 16000 : 27 * 16000]
    asr = Asr("pocketsphinx", "en-us")
    first_a, b_after_a, a_again = (asr.transcribe([x])[0] for x in (a, b, a))
    assert first_a[0] and b_after_a[0], (first_a, b_after_a)
    assert a_again == first_a
    assert Asr("pocketsphinx", "en-us").transcribe([b])[0] == b_after_a  # B alone in a fresh recogniser
    assert asr.transcribe([b, a]) == [b_after_a, first_a]  # and within one batch


def test_pocketsphinx_without_a_hypothesis_is_no_words_not_a_crash(synthetic_podcast):
    """A piece too short for the search to start (pocketsphinx: "Couldn't find <s> in first frame") has no
    hypothesis; that is "no words" for the filter to reject, not a TypeError that stops the whole build."""
    from voicepipe.corpus.engines import Asr

    wav = load_audio(synthetic_podcast.truth.dir / synthetic_podcast.truth.episodes[0].file, 16000)
    asr = Asr("pocketsphinx", "en-us")
    assert asr.transcribe([wav[3 * 16000 : 3 * 16000 + 400]]) == [("", 0.0)]
    assert asr.transcribe([wav[2 * 16000 : 8 * 16000]])[0][0]  # the recogniser still works afterwards


def test_feed_and_episode_requests_name_voicepipe_as_the_client(synthetic_podcast, tmp_path):
    """Podcast hosts and CDNs may refuse a library's default agent (here: 403 to python-httpx's, as some bot rules
    do); the feed and the episode (through a redirect, as tracking prefixes do) are fetched as voicepipe."""
    import threading
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from voicepipe.corpus.fetch import USER_AGENT, list_feed

    seen: list[str] = []

    class Picky(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            agent = self.headers.get("User-Agent", "")
            seen.append(agent)
            if agent.startswith("python-httpx") or not agent:
                self.send_error(403, "Forbidden")
            elif self.path.startswith("/track/"):  # a measurement prefix redirecting to the file
                self.send_response(302)
                self.send_header("Location", self.path[len("/track"):])
                self.end_headers()
            else:
                super().do_GET()

    truth = synthetic_podcast.truth
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Picky, directory=str(truth.dir)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        ep = truth.episodes[0]
        rss = (f'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title><item><title>one</title>'
               f'<guid>ep-1</guid><enclosure url="{base}/track/{ep.file}" type="audio/mpeg" length="0"/></item>'
               f"</channel></rss>")
        (truth.dir / "picky.xml").write_text(rss)
        episodes = list_feed(f"{base}/picky.xml")
        assert [e.url for e in episodes] == [f"{base}/track/{ep.file}"]
        got = download(episodes[0], tmp_path / "one.mp3", max_bytes=10**8)
        assert got.read_bytes() == (truth.dir / ep.file).read_bytes()
    finally:
        server.shutdown()
        server.server_close()
    assert seen and all(a == USER_AGENT for a in seen), seen
    assert len(seen) == 3  # the feed, the redirect, the file
