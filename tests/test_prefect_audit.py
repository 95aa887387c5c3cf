"""`voicepipe audit RUN_ID|CORPUS_VERSION|SHA` against a real Prefect server and a real store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from prefect import flow, task

from tasks.common import publish_link, publish_table
from tasks.events import notify_corpus_version
from tests.fixtures.prefect import REPO
from voicepipe.store import open_store

VOICEPIPE = str(Path(sys.executable).with_name("voicepipe"))


@task
def ingest(store_url: str, episode: str) -> str:
    st = open_store(store_url)
    ep = st.put_bytes(f"mp3 of {episode}".encode(), step="corpus.fetch", params={"url": f"http://feed/{episode}"},
                      name=episode)
    clip = st.put_bytes(f"clip of {episode}".encode(), step="corpus.segment", inputs=[ep.sha256],
                        params={"min_silence_s": 0.3}, name=f"{episode}-clip-0")
    return clip.sha256


@flow(name="audit-demo-build")
def audit_demo_build(store_url: str, speaker: str, episodes: list[str]) -> dict:
    from prefect.runtime import flow_run

    clips = [ingest(store_url, e) for e in episodes]
    st = open_store(store_url)
    tree = st.put_json({"clips": clips}, step="corpus.assemble", inputs=clips, params={"speaker": speaker},
                       name="corpus.json")
    version = tree.sha256[:16]
    publish_table("audit-counts", [{"episodes": len(episodes), "clips": len(clips)}])
    publish_link("audit-corpus", st.backend.uri(f"objects/{tree.sha256[:2]}/{tree.sha256}"), f"corpus {tree.sha256}")
    notify_corpus_version(store_url, speaker, version, tree.sha256)
    return {"run_id": flow_run.id, "version": version, "tree": tree.sha256}


def _audit(target: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`voicepipe audit TARGET` as a user runs it (the real entry point, in a subprocess)."""
    return subprocess.run([VOICEPIPE, "audit", target], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


def _audit_text(target: str, built: dict) -> str:
    """The same command in-process (typer's runner; saves an interpreter start per call)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from typer.testing import CliRunner

    from voicepipe.cli import cli

    with temporary_settings(updates={PREFECT_API_URL: built["env"]["PREFECT_API_URL"]}):
        env = {k: built["env"][k] for k in ("VOICEPIPE_STORE_URL", "VOICEPIPE_HOME")}
        res = CliRunner().invoke(cli, ["audit", target], env=env)
    assert res.exit_code == 0, (res.output, res.exception)
    return res.output


@pytest.fixture(scope="module")
def built(prefect_server, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from tests.fixtures.prefect import on_server, wait_task_runs

    tmp_path = tmp_path_factory.mktemp("audit")
    store_url = f"file://{tmp_path / 'store'}"
    with on_server(prefect_server):
        out = audit_demo_build(store_url, "auditspeaker", ["ep01", "ep02"])
    wait_task_runs(prefect_server, out["run_id"], 3)  # the audit reads them back from the server
    # a voice trained from that corpus (what train + evaluate/promote leave in the registry)
    st = open_store(store_url)
    ckpt = st.put_bytes(b"weights", step="train.checkpoint", inputs=[out["tree"]], params={"epoch": 3},
                        name="epoch-003")
    st.set_ref("voices/auditspeaker", ckpt.sha256, extra={"sim": 0.81, "wer": 0.02})
    env = {**prefect_server.env, "VOICEPIPE_STORE_URL": store_url, "VOICEPIPE_HOME": str(tmp_path)}
    return {**out, "env": env, "ckpt": ckpt.sha256}


def test_audit_flow_run(built) -> None:
    out = _audit_text(built["run_id"], built)
    assert f"flow run {built['run_id']}" in out and "flow=audit-demo-build" in out
    assert '"speaker": "auditspeaker"' in out  # the run's parameters
    assert "task runs: 3" in out  # 2 x ingest + notify-corpus-version
    assert "artifact audit-counts [table]" in out and "artifact corpus-event-auditspeaker [markdown]" in out
    # the stored corpus object named by the run's artifacts, with its lineage back to the episodes
    assert f"{built['tree'][:12]}  corpus.json  step=corpus.assemble" in out
    assert "corpus.fetch x2" in out and "corpus.segment x2" in out
    assert '"url": "http://feed/ep01"' in out


def test_audit_corpus_version_and_sha(built) -> None:
    out = _audit_text(built["version"], built)
    assert f"corpus version {built['version']}" in out
    assert "speaker=auditspeaker" in out and f"corpus/auditspeaker/versions/{built['version']}" in out
    # the run that built it, read back from the Prefect API
    assert f"built by flow run {built['run_id']} (" in out and "state=COMPLETED" in out
    assert "corpus.segment x2" in out
    assert f"voice voices/auditspeaker -> {built['ckpt'][:12]}" in out and '"sim": 0.81' in out

    out = _audit_text(built["ckpt"], built)
    assert "step=train.checkpoint" in out and "corpus.assemble x1" in out


def test_audit_bad_targets_one_line_errors(built) -> None:
    p = _audit("no-such-version", built["env"])
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1] == (
        "error: corpus version 'no-such-version': no store ref records it (corpus/<speaker>/versions/…)"
    )
    missing = "00000000-0000-4000-8000-000000000000"
    p = _audit(missing, built["env"])
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1].startswith(f"error: flow run {missing}: not found")


def test_audit_json_form(built) -> None:
    """`--json` gives the same report as data (for scripts)."""
    import json

    from voicepipe.pipeline.audit import audit, render

    report = audit(built["version"], store=built["env"]["VOICEPIPE_STORE_URL"])
    assert report["kind"] == "corpus_version" and report["corpora"][0]["corpus_sha"] == built["tree"]
    assert json.loads(json.dumps(report, default=str))["target"] == built["version"]
    assert render(report).startswith(f"corpus version {built['version']}")


def test_version_ref_survives_an_unchanged_rebuild_and_audit_takes_prefixes(built, prefect_server) -> None:
    """A later run that finds the same corpus version (its tree differs: the report's cache column) leaves the version
    ref on the first build and is recorded beside it; `audit` takes the 16-digit prefix the logs print."""
    from tests.fixtures.prefect import on_server

    store_url = built["env"]["VOICEPIPE_STORE_URL"]
    st = open_store(store_url)
    name = f"corpus/auditspeaker/versions/{built['version']}"
    before = st.get_ref(name)

    @flow(name="audit-demo-rebuild")
    def rebuild() -> str:
        from prefect.runtime import flow_run

        other_tree = st.put_json({"clips": [], "cache": "all hits"}, step="corpus.assemble", name="corpus.json")
        assert notify_corpus_version(store_url, "auditspeaker", built["version"], other_tree.sha256) is False
        return str(flow_run.id)

    with on_server(prefect_server):
        rerun_id = rebuild()
    assert st.get_ref(name) == before  # written once
    assert len(st.ref_history(name)) == 1
    (rec,) = st.list_refs(f"corpus/auditspeaker/rebuilds/{built['version']}/")
    assert rec["extra"]["flow_run_id"] == rerun_id and rec["extra"]["rebuild_of"] == name

    out = _audit_text(built["version"][:8], built)
    assert out.startswith(f"corpus version {built['version']}")
    assert f"built by flow run {built['run_id']} (" in out
    assert f"rebuilt unchanged by flow run {rerun_id}" in out
    # an object's sha prefix too
    out = _audit_text(built["ckpt"][:12], built)
    assert "step=train.checkpoint" in out
