#!/usr/bin/env bash
# The Prefect server (API + UI + scheduler + event triggers). Postgres when PREFECT_API_DATABASE_CONNECTION_URL
# is set (postgresql+asyncpg://user:pass@host:5432/db), SQLite in the Prefect home (~/.prefect) otherwise.
# Binds 127.0.0.1 unless PREFECT_SERVER_API_HOST says otherwise (0.0.0.0 to serve other machines).
set -euo pipefail
source "$(dirname "$0")/_common.sh"
export PREFECT_SERVER_ANALYTICS_ENABLED=${PREFECT_SERVER_ANALYTICS_ENABLED:-false}
exec "$PREFECT" server start --host "${PREFECT_SERVER_API_HOST:-127.0.0.1}" --port "${PREFECT_SERVER_API_PORT:-4200}"
