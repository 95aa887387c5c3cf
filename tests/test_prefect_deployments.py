"""prefect.yaml on a REAL Prefect server: deploy, run build-corpus through the API, event-triggered retraining.

One module-scoped set-up (slow parts shared): the session's server, `infra/setup-prefect.sh` (work pools +
`prefect deploy --all`), a cpu-pool process worker, a synthetic podcast served on loopback and a tiny codec.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.fixtures.prefect import REPO, PrefectServer, corpus_params, screenshot

pytestmark = pytest.mark.slow

SPEAKER = "deployspeaker"
EVIDENCE = REPO / "var" / "evidence"


@pytest.fixture(scope="module")
def deployed(prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory):
    """Work pools + every deployment of prefect.yaml via infra/setup-prefect.sh, and a cpu-pool worker."""
    home = tmp_path_factory.mktemp("voicepipe-home")
    env = {"VOICEPIPE_HOME": str(home), "VOICEPIPE_STORE_URL": f"file://{home / 'store'}"}
    p = subprocess.run(
        ["bash", str(REPO / "infra" / "setup-prefect.sh")],
        cwd=REPO,
        env={**prefect_server.env, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, f"setup-prefect.sh failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    prefect_server.start_worker("cpu-pool", env=env)
    yield {"server": prefect_server, "home": home, "store_url": env["VOICEPIPE_STORE_URL"]}
    prefect_server.stop_children()


def test_pools_and_deployments_exist(deployed) -> None:
    srv: PrefectServer = deployed["server"]
    with srv.client() as c:
        pools = {p["name"]: p for p in c.post("/work_pools/filter", json={}).json()}
    assert pools["cpu-pool"]["type"] == "process" and pools["gpu-pool"]["type"] == "process"
    assert pools["gpu-pool"]["concurrency_limit"] == 1
    names = {
        ("build-corpus", "build-corpus"): "cpu-pool",
        ("voice-pipeline", "voice-pipeline"): "gpu-pool",
        ("retrain-check", "retrain-check"): "cpu-pool",
        ("train-and-evaluate", "train-and-evaluate"): "gpu-pool",
    }
    deps = {}
    for (flow_name, dep_name), pool in names.items():
        d = srv.deployment(flow_name, dep_name)
        assert d["work_pool_name"] == pool
        deps[dep_name] = d
    # the UI form: build-corpus takes the pydantic CorpusParams
    schema = deps["build-corpus"]["parameter_openapi_schema"]
    assert "params" in schema["properties"], schema
    # weekly schedule on retrain-check
    crons = [s["schedule"].get("cron") for s in deps["retrain-check"]["schedules"]]
    assert crons == ["0 3 * * 1"]
    # the event trigger of train-and-evaluate became an automation on the server
    with srv.client() as c:
        autos = c.post("/automations/filter", json={}).json()
    trig = [a for a in autos if "voicepipe.corpus.changed" in str(a["trigger"].get("expect"))]
    assert trig, autos
    assert trig[0]["actions"][0]["deployment_id"] == deps["train-and-evaluate"]["id"]


def test_build_corpus_run_event_and_unchanged_rerun(deployed, prefect_podcast, tmp_path: Path) -> None:
    srv: PrefectServer = deployed["server"]
    build = srv.deployment("build-corpus", "build-corpus")
    train_dep = srv.deployment("train-and-evaluate", "train-and-evaluate")
    store_url = deployed["store_url"]
    params = {"params": corpus_params(prefect_podcast, SPEAKER, store_url, deployed["home"] / "corpus-out")}

    # 1. start build-corpus through the API (what the UI's Run form posts) and wait for it
    run = srv.create_run(build["id"], params)
    done = srv.wait_run(run["id"], timeout=300)
    assert done["state"]["type"] == "COMPLETED", f"{done['state']}\n{srv.run_logs(run['id'])}\n{srv.logs_tail()}"

    # 2. its artifacts are on the server: markdown report, a table of counts, links to stored objects
    arts = srv.artifacts(run["id"])
    kinds = {a["type"] for a in arts}
    assert {"markdown", "table"} <= kinds, [(a["key"], a["type"]) for a in arts]
    keys = {a["key"] for a in arts}
    assert f"corpus-event-{SPEAKER}" in keys
    assert any("Corpus changed" in (a["data"] or "") for a in arts if a["key"] == f"corpus-event-{SPEAKER}")

    # 3. the store knows the version; the event created a train-and-evaluate run with speaker + version
    from voicepipe.store import open_store

    store = open_store(deployed["store_url"])
    ref = store.get_ref(f"corpus/{SPEAKER}/latest")
    assert ref is not None and ref["extra"]["flow_run_id"] == run["id"]
    version = ref["extra"]["version"]
    deadline = time.monotonic() + 60
    triggered: list[dict] = []
    while time.monotonic() < deadline and not triggered:
        triggered = srv.flow_runs(train_dep["id"])
        time.sleep(1)
    assert len(triggered) == 1, srv.logs_tail()
    assert triggered[0]["parameters"]["speaker"] == SPEAKER
    assert triggered[0]["parameters"]["corpus_version"] == version
    assert triggered[0]["state"]["type"] in {"SCHEDULED", "PENDING", "RUNNING", "COMPLETED", "LATE"}

    # 4. evidence: the finished run in the UI with its artifacts, and the corpus report artifact's page
    # (the V2 UI honours ?tab=Artifacts: run header, task graph and the artifact cards in one picture)
    run_page = f"{srv.url}/v2/runs/flow-run/{run['id']}?tab=Artifacts"
    shot = screenshot(run_page, EVIDENCE / "prefect-build-corpus-run.png")
    report = next((a for a in arts if (a["key"] or "").endswith("-report")), None) or next(
        a for a in arts if a["type"] == "markdown"
    )
    shot2 = screenshot(f"{srv.url}/artifacts/artifact/{report['id']}", EVIDENCE / "prefect-build-corpus-report.png")
    print(f"\nUI screenshots: {shot} {shot2}")
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one

    # 5. a rerun on the unchanged feed: same version, no event, no new training run
    rerun = srv.create_run(build["id"], params)
    done2 = srv.wait_run(rerun["id"], timeout=300)
    assert done2["state"]["type"] == "COMPLETED", srv.run_logs(rerun["id"])
    assert store.get_ref(f"corpus/{SPEAKER}/latest")["extra"]["version"] == version
    arts2 = {a["key"]: a for a in srv.artifacts(rerun["id"])}
    assert "Corpus unchanged" in arts2[f"corpus-event-{SPEAKER}"]["data"]
    time.sleep(5)  # give a (wrong) event time to arrive and fire the trigger
    assert len(srv.events("voicepipe.corpus.changed", f"voicepipe.corpus.{SPEAKER}")) == 1
    assert len(srv.flow_runs(train_dep["id"])) == 1
