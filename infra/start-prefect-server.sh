#!/usr/bin/env bash
# The Prefect server (API + UI + scheduler + event triggers). Postgres when PREFECT_API_DATABASE_CONNECTION_URL
# is set (postgresql+asyncpg://user:pass@host:5432/db), SQLite in ~/.prefect otherwise.
set -euo pipefail
source "$(dirname "$0")/_common.sh"
export PREFECT_SERVER_ANALYTICS_ENABLED=${PREFECT_SERVER_ANALYTICS_ENABLED:-false}
exec "$PREFECT" server start --host "${PREFECT_SERVER_API_HOST:-0.0.0.0}" --port "${PREFECT_SERVER_API_PORT:-4200}"
