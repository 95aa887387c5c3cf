# Shared by infra/*.sh: repo root, the prefect/python executables, and a wait for the Prefect API.
HERE_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VOICEPIPE_REPO=${VOICEPIPE_REPO:-$HERE_REPO}
export VOICEPIPE_REPO
# the project's .venv when there is one (scripts/bootstrap.sh), else whatever is on PATH (e.g. in the image)
if [ -x "$HERE_REPO/.venv/bin/prefect" ]; then
  PREFECT="$HERE_REPO/.venv/bin/prefect"; PYTHON="$HERE_REPO/.venv/bin/python"
else
  PREFECT=prefect; PYTHON=python3
fi

need() {  # need VAR "why": fail with one line when a required variable is unset
  if [ -z "${!1:-}" ]; then echo "error: $1 is not set ($2; see infra/env.example)" >&2; exit 2; fi
}

wait_for_prefect_api() {  # up to 120 s for $PREFECT_API_URL/health
  local i
  for i in $(seq 1 120); do
    if "$PYTHON" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1] + '/health', timeout=2)" \
         "$PREFECT_API_URL" 2>/dev/null; then return 0; fi
    sleep 1
  done
  echo "error: Prefect API $PREFECT_API_URL did not answer in 120 s" >&2; exit 2
}
