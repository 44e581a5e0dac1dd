#!/usr/bin/env bash
# The HTTP proxy benchmark: one nginx backend serving a small body, measured three ways with
# wrk on this machine —
#
#   direct    wrk → nginx backend
#   nginx     wrk → nginx reverse proxy (keep-alive upstream pool) → nginx backend
#   ganglion  wrk → ganglion transparent proxy (/api/v1/proxy/bench/...) → nginx backend
#
# The backend is registered with ganglion by a small websocket client (Python, `websockets`)
# that identifies with `"ip": "http://127.0.0.1:<backend port>"` and keeps heartbeating.
#
# Servers (the backend and the proxy under test) are pinned to CPU 0, wrk to CPU 1, so both
# proxies get the same single core, shared with the backend. Each configuration is measured
# RUNS times, interleaved (the order rotates from run to run), and every run and the medians
# are printed, the medians as a markdown table.
#
# Every server runs in a session of its own, as a daemon or a service does (nginx calls
# setsid() when it daemonizes; ganglion is started under setsid here). Where the kernel groups
# tasks by session (sched_autogroup_enabled=1, the default on Debian), a server left in this
# script's session would share one scheduling group with wrk: the group's weight is split over
# both CPUs by load, so on CPU 0 the proxy would weigh about half as much as the backend it
# shares the core with, and be preempted by it about three times as often.
#
# Usage: gateway/benches/proxy.sh
# Settings (environment): RUNS=5 DURATION=10s CONNECTIONS=50 WARMUP=3s
#                         BASE_PORT=18080 (uses BASE_PORT+1 … +3, on 127.0.0.1 only)
#                         SERVER_CPU=0 LOAD_CPU=1
#                         PROXY_BENCH_BIN=<prebuilt ganglion> (default: cargo build --release)
#                         (not GANGLION_*: ganglion reads those as settings)
set -euo pipefail

RUNS=${RUNS:-5}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
WARMUP=${WARMUP:-3s}
BASE_PORT=${BASE_PORT:-18080}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BACKEND_PORT=$((BASE_PORT + 1))
NGINX_PROXY_PORT=$((BASE_PORT + 2))
GANGLION_PORT=$((BASE_PORT + 3))

root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"

log() { echo "== $*" >&2; }

# --- tools ---------------------------------------------------------------------------------

need_apt=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
command -v taskset >/dev/null 2>&1 || need_apt+=(util-linux)
if [ ${#need_apt[@]} -gt 0 ]; then
    log "installing ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if ! python3 -c 'import websockets' 2>/dev/null; then
    log "installing the Python websockets package"
    python3 -m pip install --quiet websockets
fi

pin() {
    # Pins to a CPU when there is more than one; otherwise runs as is.
    local cpu=$1
    shift
    if [ "$(nproc)" -gt 1 ]; then taskset -c "$cpu" "$@"; else "$@"; fi
}

spawn_pinned() {
    # For `(spawn_pinned CPU cmd…) &`: the subshell becomes the command, so `$!` is its pid.
    local cpu=$1
    shift
    if [ "$(nproc)" -gt 1 ]; then exec taskset -c "$cpu" "$@"; else exec "$@"; fi
}

if [ -z "${PROXY_BENCH_BIN:-}" ]; then
    log "building ganglion (release)"
    cargo build --release -p ganglion-gateway --bin ganglion >&2
    PROXY_BENCH_BIN="$root/target/release/ganglion"
fi

# --- processes we start, and only those, are stopped at exit --------------------------------

work=$(mktemp -d /tmp/ganglion-proxy-bench.XXXXXX)
# nginx's workers run as an unprivileged user and must read the document root.
chmod 755 "$work"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for conf in backend proxy; do
        if [ -f "$work/$conf.pid" ]; then kill "$(cat "$work/$conf.pid")" 2>/dev/null || true; fi
    done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

for port in "$BACKEND_PORT" "$NGINX_PROXY_PORT" "$GANGLION_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "port $port is already in use: set BASE_PORT" >&2
        exit 1
    fi
done

# --- nginx: the backend and the reverse proxy ----------------------------------------------

mkdir -p "$work/www" "$work/tmp"
printf 'hello from the nginx backend, a small body of about a hundred bytes for the proxy bench\n' \
    >"$work/www/hello.txt"

nginx_conf() {
    # $1: name, $2: the server block
    cat >"$work/$1.conf" <<EOF
worker_processes 1;
daemon on;
pid $work/$1.pid;
error_log $work/$1.error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/tmp/$1-body;
    proxy_temp_path $work/tmp/$1-proxy;
    fastcgi_temp_path $work/tmp/$1-fastcgi;
    uwsgi_temp_path $work/tmp/$1-uwsgi;
    scgi_temp_path $work/tmp/$1-scgi;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    $2
}
EOF
}

nginx_conf backend "
    server {
        listen 127.0.0.1:$BACKEND_PORT;
        root $work/www;
        default_type text/plain;
    }"
nginx_conf proxy "
    upstream backend {
        server 127.0.0.1:$BACKEND_PORT;
        # As many idle upstream connections as ganglion keeps per service (1 024), so that
        # neither proxy opens and closes upstream connections at any concurrency.
        keepalive 1024;
        keepalive_requests 10000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PROXY_PORT;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_buffering on;
        }
    }"

log "starting the nginx backend on 127.0.0.1:$BACKEND_PORT and the nginx proxy on :$NGINX_PROXY_PORT"
pin "$SERVER_CPU" "$NGINX" -c "$work/backend.conf" -e "$work/backend.error.log"
pin "$SERVER_CPU" "$NGINX" -c "$work/proxy.conf" -e "$work/proxy.error.log"

# --- ganglion and the registered backend -----------------------------------------------------

log "starting ganglion on 127.0.0.1:$GANGLION_PORT"
(spawn_pinned "$SERVER_CPU" setsid "$PROXY_BENCH_BIN" --listen "127.0.0.1:$GANGLION_PORT" \
    --data-dir "$work/data" \
    --set queue.store=memory --set tcp.listen= --set log.level=warn) \
    >"$work/ganglion.log" 2>&1 &
pids+=($!)

cat >"$work/register.py" <<'EOF'
"""Registers the nginx backend with ganglion as application `bench` and keeps heartbeating."""
import asyncio, json, sys

import websockets


async def main(gateway: str, backend: str) -> None:
    for _ in range(100):
        try:
            ws = await websockets.connect(
                f"ws://{gateway}/gateway/websocket?encoding=json", ping_interval=None)
            break
        except OSError:
            await asyncio.sleep(0.1)
    else:
        sys.exit(f"cannot reach ganglion at {gateway}")
    hello = json.loads(await ws.recv())
    interval = hello["d"]["heartbeat_interval"] / 1000
    await ws.send(json.dumps({"op": 1, "d": {
        "application_id": "bench", "client_id": "nginx-1", "ip": f"http://{backend}",
        "metadata": {"kind": {"type": "string", "value": "nginx"}}}}))
    ready = json.loads(await ws.recv())
    if ready.get("op") != 2:
        sys.exit(f"identify refused: {ready}")
    print("registered", flush=True)

    async def drain() -> None:
        async for _ in ws:
            pass

    reader = asyncio.create_task(drain())
    while not reader.done():
        await ws.send(json.dumps({"op": 5, "d": {}}))
        await asyncio.sleep(interval / 2)


asyncio.run(main(sys.argv[1], sys.argv[2]))
EOF
(exec python3 -u "$work/register.py" "127.0.0.1:$GANGLION_PORT" "127.0.0.1:$BACKEND_PORT") \
    >"$work/register.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    grep -q registered "$work/register.log" 2>/dev/null && break
    sleep 0.1
done
grep -q registered "$work/register.log" || { cat "$work/register.log" "$work/ganglion.log" >&2; exit 1; }

declare -A url=(
    [direct]="http://127.0.0.1:$BACKEND_PORT/hello.txt"
    [nginx]="http://127.0.0.1:$NGINX_PROXY_PORT/hello.txt"
    [ganglion]="http://127.0.0.1:$GANGLION_PORT/api/v1/proxy/bench/hello.txt"
)
order=(direct nginx ganglion)

for name in "${order[@]}"; do
    body=$(curl -sS --max-time 5 "${url[$name]}")
    case "$body" in
        "hello from the nginx backend"*) ;;
        *) echo "$name: unexpected answer: $body" >&2; exit 1 ;;
    esac
done

# --- measuring ------------------------------------------------------------------------------

log "warming up ($WARMUP each)"
for name in "${order[@]}"; do
    pin "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"$WARMUP" "${url[$name]}" >/dev/null
done

results="$work/results.tsv"
: >"$results"
for run in $(seq "$RUNS"); do
    # Each run starts with the next setup (direct nginx ganglion, nginx ganglion direct, …):
    # no setup always comes right after the same other one.
    shift_by=$(((run - 1) % ${#order[@]}))
    rotated=("${order[@]:shift_by}" "${order[@]:0:shift_by}")
    for name in "${rotated[@]}"; do
        log "run $run/$RUNS: $name ($DURATION, $CONNECTIONS connections)"
        out=$(pin "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency "${url[$name]}")
        if grep -q 'Non-2xx\|Socket errors' <<<"$out"; then
            echo "$out" >&2
            echo "$name: wrk saw errors" >&2
            exit 1
        fi
        printf '%s\t%s\n' "$name" "$(tr '\n' '|' <<<"$out")" >>"$results"
    done
done

python3 - "$results" "$RUNS" "$DURATION" "$CONNECTIONS" <<'EOF'
import statistics, sys

path, runs, duration, connections = sys.argv[1:]
units = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def ms(text):
    for unit in ("us", "ms", "s"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    raise ValueError(text)


samples = {}
for line in open(path):
    name, out = line.rstrip("\n").split("\t", 1)
    rps = p50 = p99 = None
    for row in out.split("|"):
        parts = row.split()
        if row.startswith("Requests/sec:"):
            rps = float(parts[1])
        elif parts[:1] == ["50%"]:
            p50 = ms(parts[1])
        elif parts[:1] == ["99%"]:
            p99 = ms(parts[1])
    samples.setdefault(name, []).append((rps, p50, p99))

med = {n: tuple(statistics.median(x[i] for x in s) for i in range(3)) for n, s in samples.items()}
print("runs (req/s, p99 ms):")
for name in ("direct", "nginx", "ganglion"):
    print(f"  {name:9}" + "".join(f"  {rps:8,.0f} {p99:6.3f}" for rps, _, p99 in samples[name]))
print()
labels = {"direct": "direct (wrk → nginx backend)",
          "nginx": "nginx reverse proxy",
          "ganglion": "ganglion transparent proxy"}
print(f"medians of {runs} runs of wrk -t1 -c{connections} -d{duration}; servers on one core, wrk on another\n")
print("| setup | req/s | p50 (ms) | p99 (ms) |")
print("|---|---:|---:|---:|")
for name in ("direct", "nginx", "ganglion"):
    rps, p50, p99 = med[name]
    print(f"| {labels[name]} | {rps:,.0f} | {p50:.3f} | {p99:.3f} |")
g, n = med["ganglion"], med["nginx"]
print(f"\nganglion / nginx: throughput ×{g[0] / n[0]:.2f}, p50 ×{g[1] / n[1]:.2f}, p99 ×{g[2] / n[2]:.2f}")
EOF
