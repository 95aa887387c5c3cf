#!/usr/bin/env bash
# Once per server (idempotent): the two process work pools and every deployment in prefect.yaml.
#   cpu-pool: ingestion (build-corpus, retrain-check)
#   gpu-pool: training/evaluation, concurrency limit = number of GPUs ($VOICEPIPE_GPU_COUNT, default 1);
#             each GPU worker also runs with --limit 1, so one training run per GPU.
set -euo pipefail
source "$(dirname "$0")/_common.sh"
need PREFECT_API_URL "the Prefect server's API, e.g. http://localhost:4200/api"
wait_for_prefect_api
existing=$("$PYTHON" -c '
import json, sys, urllib.request
req = urllib.request.Request(sys.argv[1] + "/work_pools/filter", data=b"{}", headers={"Content-Type": "application/json"})
print(" ".join(p["name"] for p in json.load(urllib.request.urlopen(req, timeout=10))))' "$PREFECT_API_URL")
for pool in cpu-pool gpu-pool; do
  case " $existing " in
    *" $pool "*) echo "work pool $pool exists" ;;
    *) "$PREFECT" work-pool create "$pool" --type process ;;
  esac
done
"$PREFECT" work-pool set-concurrency-limit gpu-pool "${VOICEPIPE_GPU_COUNT:-1}"
cd "$VOICEPIPE_REPO"
"$PREFECT" --no-prompt deploy --all
