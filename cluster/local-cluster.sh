#!/usr/bin/env bash
# Start a dask scheduler and workers on this machine (loopback only), run one command against
# them, and stop them again -- also when the command fails or is interrupted.
#
#   bash cluster/local-cluster.sh [--workers N] [--port P] -- dnmf fit corpus.zarr model.zarr -k 20
#
# The command sees DASK_SCHEDULER_ADDRESS, which every dnmf command honours. Logs go to
# ${DNMF_CLUSTER_LOGS:-./dask-logs}/. The dashboard is served on 127.0.0.1 only
# (reach it from elsewhere through `ssh -L 8787:127.0.0.1:8787 host`).
set -euo pipefail
workers=2
port=8786
dash=8787
while [[ $# -gt 0 ]]; do
  case $1 in
    --workers) workers=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --dashboard-port) dash=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "usage: $0 [--workers N] [--port P] [--dashboard-port D] -- COMMAND ..." >&2; exit 2 ;;
  esac
done
[[ $# -gt 0 ]] || { echo "usage: $0 [--workers N] [--port P] -- COMMAND ..." >&2; exit 2; }
logs=${DNMF_CLUSTER_LOGS:-./dask-logs}
mkdir -p "$logs"
addr="tcp://127.0.0.1:$port"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

dask scheduler --host 127.0.0.1 --port "$port" --dashboard-address "127.0.0.1:$dash" >"$logs/scheduler.log" 2>&1 &
pids+=($!)
dask worker "$addr" --nworkers "$workers" --nthreads 1 --host 127.0.0.1 --memory-limit 4GiB \
  --dashboard-address 127.0.0.1:0 >"$logs/workers.log" 2>&1 &
pids+=($!)
# wait until the workers have registered (at most 120 s)
python - "$addr" "$workers" <<'PY'
import sys
from distributed import Client
with Client(sys.argv[1], timeout=120) as c:
    c.wait_for_workers(int(sys.argv[2]), timeout=120)
    print(f"cluster up: {sys.argv[1]} with {len(c.scheduler_info()['workers'])} workers; dashboard {c.dashboard_link}", file=sys.stderr)
PY
DASK_SCHEDULER_ADDRESS=$addr "$@"
