#!/usr/bin/env bash
# A local fleet without containers, for a laptop or one server: a Redis server (unless the broker already
# answers) and N worker processes, each `worker start --concurrency 1` with cores // N OpenVINO threads.
# Threads are not pinned (the kernel spreads them; worker/cpu_affinity.py); FLEET_PIN=1 gives worker i its own
# block of cores instead (`--cpus`), for a host that runs nothing else.
#
#   ops/fleet/fleet.sh start [N] [extra `worker start` options]   # default N=2
#   ops/fleet/fleet.sh status
#   ops/fleet/fleet.sh stop                                      # warm: running studies finish first
#   ops/fleet/fleet.sh stop --now                                # cold: running studies are redelivered
#
# Environment: LITEMEDSAM_BROKER (default redis://127.0.0.1:6379/0; a password in it is given to the Redis
# this script starts), FLEET_DIR (pid files, logs, Redis data; default <repo>/.fleet), WORKER_THREADS
# (OpenVINO threads per worker; default cores // N), FLEET_PIN (1: own cores per worker), and every LITEMEDSAM_*
# setting (worker/contract/settings.py).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${FLEET_BIN:-$ROOT/.venv/bin}
FLEET_DIR=${FLEET_DIR:-$ROOT/.fleet}
export LITEMEDSAM_BROKER=${LITEMEDSAM_BROKER:-redis://127.0.0.1:6379/0}

die() { echo "fleet: $*" >&2; exit 1; }

broker_part() {  # host | port | password of $LITEMEDSAM_BROKER
  "$BIN/python" - "$1" <<'PY'
import os, sys
from urllib.parse import urlparse
url = urlparse(os.environ["LITEMEDSAM_BROKER"])
print({"host": url.hostname or "127.0.0.1", "port": url.port or 6379, "password": url.password or ""}[sys.argv[1]])
PY
}

redis_call() {  # ping | shutdown, with the broker URL as redis-py reads it (password and all)
  "$BIN/python" - "$1" <<'PY' 2>/dev/null
import os, sys
import redis
client = redis.Redis.from_url(os.environ["LITEMEDSAM_BROKER"], socket_connect_timeout=1)
try:
    client.ping() if sys.argv[1] == "ping" else client.shutdown()
except redis.exceptions.ConnectionError:
    sys.exit(sys.argv[1] == "ping")
except redis.exceptions.ResponseError as error:
    sys.exit(f"{error}")
PY
}

redis_up() { redis_call ping; }

start_redis() {
  redis_up && { echo "fleet: Redis at $LITEMEDSAM_BROKER already answers"; return; }
  local host port password
  host=$(broker_part host) port=$(broker_part port) password=$(broker_part password)
  case "$host" in 127.0.0.1|localhost|::1) ;; *) die "Redis at $host does not answer (start it there)";; esac
  command -v redis-server >/dev/null || die "redis-server not found (apt-get install redis-server)"
  mkdir -p "$FLEET_DIR/redis"
  local args=(--bind 127.0.0.1 --port "$port" --dir "$FLEET_DIR/redis" --appendonly yes --save ""
              --daemonize yes --pidfile "$FLEET_DIR/redis.pid" --logfile "$FLEET_DIR/redis.log")
  [ -n "$password" ] && args+=(--requirepass "$password")
  redis-server "${args[@]}"
  for _ in $(seq 50); do redis_up && { echo "fleet: started Redis on 127.0.0.1:$port"; return; }; sleep 0.2; done
  die "Redis did not start (see $FLEET_DIR/redis.log)"
}

start_workers() {
  local count=$1; shift
  local cores threads
  cores=$("$BIN/python" -c "from worker.contract.settings import available_cores; print(available_cores())")
  threads=${WORKER_THREADS:-$(( cores / count > 0 ? cores / count : 1 ))}
  for i in $(seq "$count"); do
    local pidfile="$FLEET_DIR/worker-$i.pid"
    local cpus=()
    if [ "${FLEET_PIN:-0}" = 1 ]; then  # worker i: block i - 1 of the cores (the same rule as pool processes)
      cpus=(--cpus "$("$BIN/python" -c "from worker.cpu_affinity import plan, format_cpu_list as f
print(f(plan('all', $i - 1, $threads).cores))")")
    fi
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "fleet: worker $i already runs (pid $(cat "$pidfile"))"; continue
    fi
    # setsid: each worker leads its own process group, so `stop` ends it and its pool children together
    setsid "$BIN/worker" start --concurrency 1 --threads "$threads" "${cpus[@]}" --hostname "w$i@%h" "$@" \
      >"$FLEET_DIR/worker-$i.log" 2>&1 < /dev/null &
    echo $! >"$pidfile"
    echo "fleet: worker w$i (pid $!, $threads thread(s)${cpus[1]:+, cores ${cpus[1]}}), log $FLEET_DIR/worker-$i.log"
  done
  wait_ready "$count"
}

wait_ready() {  # every worker w1..wN of this host answers a ping
  local want=$1 host
  host=$("$BIN/python" -c "import socket; print(socket.gethostname())")
  for _ in $(seq 60); do
    local ready=0
    for i in $(seq "$want"); do
      "$BIN/worker" ping --node "w$i@$host" --timeout 1 >/dev/null 2>&1 && ready=$((ready + 1))
    done
    [ "$ready" -ge "$want" ] && { echo "fleet: $ready worker(s) ready"; return; }
    sleep 1
  done
  die "workers not ready after 2 minutes (see $FLEET_DIR/worker-*.log)"
}

stop_all() {
  local signal=TERM
  [ "${1:-}" = "--now" ] && signal=QUIT
  for pidfile in "$FLEET_DIR"/worker-*.pid; do
    [ -f "$pidfile" ] || continue
    local pid; pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      kill -"$signal" -- "-$pid" 2>/dev/null || true
      for _ in $(seq 900); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      kill -0 "$pid" 2>/dev/null && { echo "fleet: worker pid $pid did not stop; killing"; kill -KILL -- "-$pid"; }
    fi
    rm -f "$pidfile"
    echo "fleet: stopped worker pid $pid"
  done
  if [ -f "$FLEET_DIR/redis.pid" ]; then
    redis_call shutdown || kill "$(cat "$FLEET_DIR/redis.pid")" 2>/dev/null || true
    rm -f "$FLEET_DIR/redis.pid"
    echo "fleet: stopped the Redis this script started (data kept in $FLEET_DIR/redis)"
  fi
}

case "${1:-}" in
  start)
    shift
    count=${1:-2}; [ $# -gt 0 ] && shift
    [[ "$count" =~ ^[1-9][0-9]*$ ]] || die "N must be a positive number"
    mkdir -p "$FLEET_DIR"
    start_redis
    start_workers "$count" "$@"
    echo "fleet: submit with  LITEMEDSAM_BROKER=$LITEMEDSAM_BROKER $BIN/producer submit DIR --out OUT"
    ;;
  status)
    redis_up && echo "fleet: Redis at $LITEMEDSAM_BROKER answers" || echo "fleet: Redis does not answer"
    "$BIN/worker" ping || true
    ;;
  stop)
    shift
    stop_all "${1:-}"
    ;;
  *)
    sed -n '2,15p' "$0"; exit 2
    ;;
esac
