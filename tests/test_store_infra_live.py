"""infra/'s plain-command scripts, for real: start-prefect-server.sh, setup-prefect.sh (pools + deploy --all) and
start-worker.sh cpu against a loopback Prefect server; the worker runs a deployed flow that writes to the S3 store
(moto) using only the VOICEPIPE_* env the scripts pass on. Docker itself is not available here."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.fixtures.store import free_port, s3_settings_for
from voicepipe.store import open_store

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"

PROBE_FLOW = '''
from prefect import flow
from voicepipe.store import open_store


@flow
def probe(word: str = "hello") -> str:
    store = open_store()  # everything from the worker's VOICEPIPE_* environment
    ref = store.put_bytes(word.encode(), step="infra.probe", params={"word": word})
    store.set_ref("probe/latest", ref)
    return ref.sha256
'''

PROBE_YAML = '''
name: infra-probe
pull:
  - prefect.deployments.steps.set_working_directory:
      directory: "{{ $VOICEPIPE_REPO }}"
deployments:
  - name: probe
    entrypoint: probe_flow.py:probe
    work_pool:
      name: cpu-pool
'''


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.mark.slow
def test_scripts_bring_up_server_pools_worker_and_run_a_flow(s3_server, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "probe_flow.py").write_text(PROBE_FLOW)
    (repo / "prefect.yaml").write_text(PROBE_YAML)
    port = free_port()
    url = "s3://voicepipe-test/infra-live"
    settings = s3_settings_for(s3_server, url, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "VOICEPIPE_"))}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{tmp_path}/prefect.db",
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_SERVER_UI_ENABLED="false",
        # background services this test does not need (keeps the 2-core CI machine free for the worker)
        **{f"PREFECT_SERVER_SERVICES_{svc}_ENABLED": "false" for svc in (
            "CANCELLATION_CLEANUP", "DB_VACUUM", "EVENT_LOGGER", "FOREMAN", "LATE_RUNS", "SCHEDULER",
            "PAUSE_EXPIRATIONS", "REPOSSESSOR", "CLEANUP_RECONCILER", "TRIGGERS")},
        VOICEPIPE_REPO=str(repo),
        VOICEPIPE_HOME=str(tmp_path / "home"),
        VOICEPIPE_STORE_URL=url,
        VOICEPIPE_S3_ENDPOINT_URL=s3_server["endpoint"],
        VOICEPIPE_S3_ACCESS_KEY=s3_server["access_key"],
        VOICEPIPE_S3_SECRET_KEY=s3_server["secret_key"],
    )
    t0 = time.monotonic()
    marks: dict[str, float] = {}
    server = _start(["bash", str(INFRA / "start-prefect-server.sh")], env, tmp_path / "server.log")
    worker = None
    try:
        setup = subprocess.run(["bash", str(INFRA / "setup-prefect.sh")], env=env, capture_output=True, text=True,
                               timeout=240)
        assert setup.returncode == 0, setup.stdout[-2000:] + setup.stderr[-2000:]
        marks["server+setup"] = time.monotonic() - t0
        api = env["PREFECT_API_URL"]
        pools = {p["name"]: p for p in httpx.post(f"{api}/work_pools/filter", json={}).json()}
        assert pools["cpu-pool"]["type"] == "process" and pools["gpu-pool"]["type"] == "process"
        assert pools["gpu-pool"]["concurrency_limit"] == 1
        worker = _start(["bash", str(INFRA / "start-worker.sh"), "cpu"], env, tmp_path / "worker.log")
        dep = httpx.get(f"{api}/deployments/name/probe/probe").json()
        created = httpx.post(f"{api}/deployments/{dep['id']}/create_flow_run",
                             json={"parameters": {"word": "infra-ok"}})
        assert created.status_code == 201, created.text
        store = open_store(settings)
        deadline = time.monotonic() + 120
        while (ref := store.get_ref("probe/latest")) is None:
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-3000:]
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(1)
        marks["flow ran"] = time.monotonic() - t0
        print("timings (s from start):", {k: round(v, 1) for k, v in marks.items()})
        assert ref["sha"] == hashlib.sha256(b"infra-ok").hexdigest()
        assert store.meta(ref["sha"])["params"] == {"word": "infra-ok"}
    finally:
        if worker is not None:
            _stop(worker)
        _stop(server)
