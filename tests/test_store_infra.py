"""infra/: the compose file, env.example and start scripts. Docker does not run here, so the compose file is
parsed and checked (services, env, pool names against prefect.yaml), not started."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from voicepipe.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())


def env_example() -> dict[str, str]:
    out = {}
    for line in (INFRA / "env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


def test_compose_has_every_service(compose):
    services = compose["services"]
    for name in ("minio", "minio-init", "postgres", "prefect-server", "prefect-deploy", "cpu-worker", "gpu-worker"):
        assert name in services, name
    assert "server" in services["minio"]["command"]
    assert "mc mb" in " ".join(services["minio-init"]["command"])
    assert "prefect server start" in services["prefect-server"]["command"]
    db_url = services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert db_url.startswith("postgresql+asyncpg://") and "@postgres:5432/" in db_url
    assert services["prefect-server"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    devices = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert services["cpu-worker"]["command"] == ["infra/start-worker.sh", "cpu"]
    assert services["gpu-worker"]["command"] == ["infra/start-worker.sh", "gpu"]


def test_workers_get_the_env_they_need(compose):
    for name in ("cpu-worker", "gpu-worker", "prefect-deploy", "relay"):
        env = compose["services"][name]["environment"]  # YAML merge keys already applied by the parser
        for key in ("PREFECT_API_URL", "VOICEPIPE_STORE_URL", "VOICEPIPE_S3_ENDPOINT_URL", "VOICEPIPE_S3_ACCESS_KEY",
                    "VOICEPIPE_S3_SECRET_KEY", "VOICEPIPE_REPO", "VOICEPIPE_MODELS_DIR"):
            assert key in env, (name, key)
        assert env["VOICEPIPE_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert compose["services"]["gpu-worker"]["environment"]["VOICEPIPE_DEVICE"] == "cuda"


def test_every_variable_is_in_env_example(compose):
    documented = env_example()
    text = (INFRA / "docker-compose.yml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", text))
    for script in INFRA.glob("*.sh"):
        used |= {v for v in re.findall(r"\$\{?([A-Z][A-Z0-9_]+)", script.read_text())
                 if v.startswith(("VOICEPIPE_", "PREFECT_", "MINIO_", "CUDA_"))}
    used -= {"PREFECT", "PYTHON"}  # executables set by _common.sh
    assert used - documented.keys() == set()
    settings_vars = {f"VOICEPIPE_{name.upper()}" for name in Settings.model_fields}
    assert settings_vars - documented.keys() == set(), "add the new setting to infra/env.example"


def test_env_example_is_valid_settings(monkeypatch):
    for k, v in env_example().items():
        monkeypatch.setenv(k, v)
    s = load_settings()
    assert s.store_url.startswith("s3://") and s.s3_endpoint_url == "http://localhost:9000"
    assert s.s3_secret_key.get_secret_value() == env_example()["MINIO_ROOT_PASSWORD"]
    assert s.offline is True


def test_pool_names_match_prefect_yaml():
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    pools = {d["work_pool"]["name"] for d in deployments}
    assert pools == {"cpu-pool", "gpu-pool"}
    setup = (INFRA / "setup-prefect.sh").read_text()
    worker = (INFRA / "start-worker.sh").read_text()
    for pool in pools:
        assert pool in setup and f"--pool {pool}" in worker
        assert f"prefect work-pool create {pool} --type process" in (INFRA / "README.md").read_text()
    assert "set-concurrency-limit gpu-pool" in setup and "--limit 1" in worker


def test_dockerfile_copies_existing_paths():
    for line in (INFRA / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), src


def test_scripts_parse_and_fail_clearly():
    scripts = sorted(INFRA.glob("*.sh"))
    assert {s.name for s in scripts} >= {"start-minio.sh", "start-prefect-server.sh", "setup-prefect.sh",
                                         "start-worker.sh"}
    for s in scripts:
        subprocess.run(["bash", "-n", str(s)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "VOICEPIPE_"))}
    r = subprocess.run(["bash", str(INFRA / "start-worker.sh"), "cpu"], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip() == (
        "error: PREFECT_API_URL is not set (the Prefect server's API, e.g. http://localhost:4200/api; "
        "see infra/env.example)")
    env.update(PREFECT_API_URL="http://127.0.0.1:9/api", VOICEPIPE_STORE_URL="s3://b/p")
    r = subprocess.run(["bash", str(INFRA / "start-worker.sh"), "tpu"], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "usage:" in r.stderr
    r = subprocess.run(["bash", str(INFRA / "start-minio.sh")], env={"PATH": os.environ["PATH"]},
                       capture_output=True, text=True)
    assert r.returncode != 0 and "MINIO_ROOT_USER" in r.stderr


def test_prefect_variables_are_real_prefect_settings(compose):
    """Every PREFECT_* name in env.example and the compose file is one Prefect 3 reads (a typo is silently ignored
    by Prefect, so check the names against its settings model)."""
    from prefect.settings import Settings as PrefectSettings
    from prefect.settings.legacy import _get_settings_fields  # the env-name -> setting map `prefect config` uses

    known = set(_get_settings_fields(PrefectSettings))
    names = {k for k in env_example() if k.startswith("PREFECT_")}
    for svc in compose["services"].values():
        env = svc.get("environment") or {}
        names |= {k for k in env if k.startswith("PREFECT_")}
    assert names and names - known == set()


def test_setup_is_safe_by_default(compose):
    """The plain-command path needs no Postgres, secrets stay out of git, and everything binds loopback."""
    env = env_example()
    assert "PREFECT_API_DATABASE_CONNECTION_URL" not in env  # SQLite unless a Postgres server is really started
    assert env["PREFECT_SERVER_API_HOST"] == "127.0.0.1"
    assert env["MINIO_ADDRESS"].startswith("127.0.0.1:") and env["VOICEPIPE_RELAY_HOST"] == "127.0.0.1"
    ignored = subprocess.run(["git", "check-ignore", "-q", "infra/.env"], cwd=ROOT)
    assert ignored.returncode == 0, "infra/.env (the passwords) must be git-ignored"
    assert "${PREFECT_SERVER_API_HOST:-127.0.0.1}" in (INFRA / "start-prefect-server.sh").read_text()
    assert "${MINIO_ADDRESS:-127.0.0.1:9000}" in (INFRA / "start-minio.sh").read_text()
    for svc in ("minio", "prefect-server"):
        assert all(str(p).startswith("127.0.0.1:") for p in compose["services"][svc]["ports"]), svc
    assert "--host 0.0.0.0" not in (INFRA / "README.md").read_text()


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name] = version
    return pins


def test_lock_pins_every_dependency_and_keeps_the_cpu_torch():
    """requirements.lock (scripts/lock.sh) pins every dependency of pyproject.toml, torch at the CPU set-up's 2.13.0
    and nothing of CUDA; a stale lock (pyproject.toml changed since) fails here: run scripts/lock.sh."""
    import hashlib
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = _lock()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    missing = [str(r) for r in wanted if canonicalize_name(r.name) not in pins]
    assert not missing, f"not in requirements.lock (run scripts/lock.sh): {missing}"
    for r in wanted:
        assert r.specifier.contains(pins[canonicalize_name(r.name)], prereleases=True), str(r)
    assert pins["torch"] == "2.13.0"
    assert not [n for n in pins if n.startswith("nvidia-") or n == "triton"]
    header = (ROOT / "requirements.lock").read_text().splitlines()[1]
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    assert f"pyproject.toml sha256 {digest}" in header, "pyproject.toml changed since the lock: run scripts/lock.sh"
    for installer in ("scripts/bootstrap.sh", "infra/Dockerfile"):
        assert "requirements.lock" in (ROOT / installer).read_text(), installer
    assert 'TORCH_VERSION:-2.13.0' in (ROOT / "scripts/bootstrap.sh").read_text()
