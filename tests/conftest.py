"""Shared pytest setup. Each area owns its fixtures in tests/fixtures/<area>.py."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# 2-core CI: one intra-op thread per process beats oversubscription when servers/workers run beside the tests
os.environ.setdefault("OMP_NUM_THREADS", "1")

pytest_plugins = [
    "tests.fixtures.store",
    "tests.fixtures.models",
    "tests.fixtures.corpus",
    "tests.fixtures.train",
    "tests.fixtures.prefect",
    "tests.fixtures.serve",
    "tests.fixtures.studio",
]
