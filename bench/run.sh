#!/usr/bin/env bash
# `make bench`: the standard workloads of the performance issue against herald, herald
# with `backend.kind = "redis"` (herald-redis: its own redis-server beside it), the naive
# baseline broker (`herald-bench baseline`: hyper + one broadcast channel), the floor
# (`herald-bench floor`: one write() per subscriber in a loop, no broker; idle, fanout-2
# and publish only) and, when nginx + Nchan are installed, Nchan, in the same run; then a
# side-by-side table.
#
#   bench/run.sh                  every workload, every broker (~7-10 minutes)
#   BENCH_BROKERS=herald bench/run.sh                herald alone
#   BENCH_BROKERS="herald herald-redis" bench/run.sh  memory against Redis backend
#   BENCH_WORKLOADS="fanout-2 publish" bench/run.sh   a subset
#   BENCH_SUBSCRIBERS=2000 bench/run.sh              smaller (quick look)
#   BENCH_REPEAT=3 bench/run.sh                       each workload 3 times, brokers
#                                                    interleaved; the table shows medians
#   HERALD_BINARY=/tmp/herald-old bench/run.sh       another herald build (before/after)
#   BENCH_NET=loopback bench/run.sh                  plain loopback instead of the veth pair
#   BENCH_QUIET_WAIT=0 bench/run.sh                  do not wait for a quiet machine
#
# The network (BENCH_NET): `veth` (the default; root) puts the broker in one network
# namespace and the load tool in another, joined by a veth pair with RPS steering each
# side's receive processing to its own core (bench/netns.sh makes them, this script
# removes them when it exits, even on failure or Ctrl-C): the broker's core pays for its
# sends and the ACKs it receives, the load core for the clients' receive path, as across
# a real network. `loopback` runs everything in this namespace over lo, where the sender's
# sendmsg runs the receiver's TCP path in its own softirq. Both use 127.0.0.0/8 only.
#
# Brokers run pinned to core 0 (`taskset -c 0`, nginx with one worker), the load tool on
# core 1, so the broker's CPU figures are one core's worth; the tool reports both the
# broker's process CPU and all of core 0's (/proc/stat) over the publishing window. herald-redis's redis-server
# shares core 0 with herald (a real deployment gives Redis a host of its own); herald's
# figures are its own process, Redis's are measured apart (--backend-pid). Each workload
# gets a fresh broker process, and herald-redis a fresh, empty redis-server (memory
# figures start from an idle process). Only loopback addresses are used: herald on
# 127.0.0.1:18080 (admin 19090), nginx + Nchan on 127.0.0.1:18081, the baseline on
# 127.0.0.1:18082, the floor on 127.0.0.1:18083, redis-server on 127.0.0.1:18379.
#
# Results: bench/results/latest.md and latest.json (the side-by-side table, every run,
# the machine), and bench/results/runs/ (each run's report and progress log).
# Everything this script starts is stopped by pid when it exits.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SUBS="${BENCH_SUBSCRIBERS:-10000}"
BATCH="${BENCH_BATCH:-100}"
REPEAT="${BENCH_REPEAT:-1}"
WORKLOADS="${BENCH_WORKLOADS:-idle fanout-2 fanout-2-python fanout-50 fanout-50-coalesced publish publish-pipelined publish-batch storm channels-10k}"
WANT_BROKERS="${BENCH_BROKERS:-herald herald-redis nchan baseline floor}"
NET="${BENCH_NET:-veth}"
QUIET_PERCENT="${BENCH_QUIET_PERCENT:-25}"
QUIET_WAIT="${BENCH_QUIET_WAIT:-60}"
NGINX="${NGINX:-/usr/sbin/nginx}"
NCHAN_MODULE=/usr/lib/nginx/modules/ngx_nchan_module.so
REDIS_SERVER="${REDIS_SERVER:-/usr/bin/redis-server}"
REDIS_CLI="${REDIS_CLI:-/usr/bin/redis-cli}"

HERALD_PORT=18080
HERALD_ADMIN_PORT=19090
NCHAN_PORT=18081
BASELINE_PORT=18082
FLOOR_PORT=18083
REDIS_PORT=18379
RESULTS="$ROOT/bench/results"
# veth (the default) writes latest.md, latest.json and runs/; loopback latest-loopback.md,
# latest-loopback.json and runs-loopback/, so that one run of each stands side by side.
SUFFIX=""
[ "${BENCH_NET:-veth}" = loopback ] && SUFFIX="-loopback"
RUNS="$RESULTS/runs$SUFFIX"
SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/herald-bench.XXXXXX")"

HERALD_PID=""
HERALD_ENV=""
NGINX_PID=""
BASELINE_PID=""
FLOOR_PID=""
REDIS_PID=""
CLIENT_PID=""

log() { printf '\n== %s\n' "$*" >&2; }

# Commands in the broker's and in the load tool's network namespace (veth), or here.
IN_BROKER=()
IN_LOAD=()
NETNS_ID=""

# A port of 127.0.0.1 that accepts connections, seen from the broker's side.
port_open() { "${IN_BROKER[@]}" bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

wait_port() {
    local port=$1 pid=$2 i
    for i in $(seq 1 100); do
        if port_open "$port"; then return 0; fi
        if ! kill -0 "$pid" 2>/dev/null; then return 1; fi
        sleep 0.1
    done
    return 1
}

# The whole machine's busy time (user + nice + system + irq + softirq of every core) over
# one second, in % of one core.
machine_busy() {
    local a b
    a=($(head -1 /proc/stat))
    sleep 1
    b=($(head -1 /proc/stat))
    echo $(( (b[1] + b[2] + b[3] + b[6] + b[7] - a[1] - a[2] - a[3] - a[6] - a[7]) * 100 / $(getconf CLK_TCK) ))
}

# Before a run, with no broker up: wait up to $QUIET_WAIT seconds for the rest of the
# machine (other builds and tests) to use less than $QUIET_PERCENT % of a core, so that the
# core figures measure the broker and not them. The run goes ahead either way; its report
# says how much else ran (`others_cpu_percent`, `rest_busy_percent`).
wait_quiet() {
    local busy waited=0
    [ "$QUIET_WAIT" -gt 0 ] || return 0
    while busy=$(machine_busy); [ "$busy" -ge "$QUIET_PERCENT" ]; do
        if [ "$waited" -ge "$QUIET_WAIT" ]; then
            echo "bench: the machine is still busy ($busy% of a core in other work) after ${QUIET_WAIT} s: running anyway" >&2
            return 0
        fi
        [ "$waited" = 0 ] && echo "bench: the machine is busy ($busy% of a core in other work): waiting up to ${QUIET_WAIT} s" >&2
        waited=$((waited + 1))
    done
}

# Stop one process by pid: TERM, then KILL after $2 seconds.
stop_pid() {
    local pid=$1 grace=${2:-15} i
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 1 $((grace * 10))); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    if [ -n "$CLIENT_PID" ]; then kill "$CLIENT_PID" 2>/dev/null || true; fi
    if declare -F stop_brokers >/dev/null; then stop_brokers 5; fi
    if [ -n "$NETNS_ID" ]; then "$ROOT/bench/netns.sh" down "$NETNS_ID" || true; fi
    rm -rf "$SCRATCH"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Two cores or more: broker on core 0, load on core 1. Fewer: no pinning.
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
    PIN_BROKER=(taskset -c 0)
    PIN_LOAD=(taskset -c 1)
else
    echo "bench: fewer than 2 cores (or no taskset): broker and load are not pinned" >&2
    PIN_BROKER=()
    PIN_LOAD=()
fi

# Each stream is a descriptor: take the hard limit (20,000 here) for brokers and tool.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

BROKER_CORE=0
LOAD_CORE=1
[ "${#PIN_BROKER[@]}" = 0 ] && { BROKER_CORE=""; LOAD_CORE=""; }
case "$NET" in
    veth)
        if ! "$ROOT/bench/netns.sh" check; then
            echo "bench: BENCH_NET=veth needs the above; BENCH_NET=loopback runs without" >&2
            exit 1
        fi
        if [ -z "$BROKER_CORE" ]; then
            echo "bench: BENCH_NET=veth needs 2 cores (each side's receive work on its own)" >&2
            exit 1
        fi
        # The namespaces are named after this script's pid: runs at the same time do not meet.
        NETNS_ID="$$"
        log "network: veth pair between namespaces herald-bench-b-$NETNS_ID (broker, core $BROKER_CORE) and herald-bench-l-$NETNS_ID (load, core $LOAD_CORE)"
        BROKER_CORE=$BROKER_CORE LOAD_CORE=$LOAD_CORE "$ROOT/bench/netns.sh" up "$NETNS_ID"
        IN_BROKER=(ip netns exec "herald-bench-b-$NETNS_ID")
        IN_LOAD=(ip netns exec "herald-bench-l-$NETNS_ID")
        ;;
    loopback) log "network: loopback (everything in this namespace)" ;;
    *) echo "bench: BENCH_NET is veth or loopback, not $NET" >&2; exit 64 ;;
esac
CORE_ARGS=()
[ -n "$BROKER_CORE" ] && CORE_ARGS=(--broker-core "$BROKER_CORE" --load-core "$LOAD_CORE" --net "$NET")

BROKERS=()
for broker in $WANT_BROKERS; do
    case "$broker" in
        herald | baseline | floor) BROKERS+=("$broker") ;;
        herald-redis)
            if [ -x "$REDIS_SERVER" ] && [ -x "$REDIS_CLI" ]; then
                BROKERS+=(herald-redis)
            else
                echo "bench: redis-server or redis-cli is missing ($REDIS_SERVER, $REDIS_CLI): no herald-redis" >&2
                echo "       (Debian: apt-get install redis-server)" >&2
            fi ;;
        nchan)
            if [ -x "$NGINX" ] && [ -f "$NCHAN_MODULE" ]; then
                BROKERS+=(nchan)
            else
                echo "bench: nginx or the Nchan module is missing ($NGINX, $NCHAN_MODULE): no Nchan" >&2
                echo "       (Debian: apt-get install nginx libnginx-mod-nchan)" >&2
            fi ;;
        *) echo "bench: unknown broker $broker (herald, herald-redis, nchan, baseline, floor)" >&2; exit 64 ;;
    esac
done

# The ports of the brokers that take part must be free (others may be in use).
for broker in "${BROKERS[@]}"; do
    case "$broker" in
        herald) ports="$HERALD_PORT $HERALD_ADMIN_PORT" ;;
        herald-redis) ports="$HERALD_PORT $HERALD_ADMIN_PORT $REDIS_PORT" ;;
        nchan) ports=$NCHAN_PORT ;;
        baseline) ports=$BASELINE_PORT ;;
        floor) ports=$FLOOR_PORT ;;
    esac
    for port in $ports; do
        if port_open "$port"; then
            echo "bench: 127.0.0.1:$port ($broker) is in use; stop whatever listens there first" >&2
            exit 1
        fi
    done
done

log "building release binaries"
cargo build --release --bins
HERALD="${HERALD_BINARY:-$ROOT/target/release/herald}"
BENCH="$ROOT/target/release/herald-bench"

start_herald() {
    local attempt
    for attempt in 1 2 3; do
        "${IN_BROKER[@]}" env $HERALD_ENV "${PIN_BROKER[@]}" "$HERALD" --demo --config "$ROOT/bench/herald-bench.toml" \
            >>"$SCRATCH/herald.log" 2>&1 &
        HERALD_PID=$!
        if wait_port $HERALD_PORT "$HERALD_PID"; then
            TARGET_PIDS=(--target-pid "$HERALD_PID")
            return 0
        fi
        # A port still held by something else: try again shortly.
        stop_pid "$HERALD_PID" 2
        HERALD_PID=""
        sleep 2
    done
    echo "bench: herald did not start:" >&2
    tail -5 "$SCRATCH/herald.log" >&2
    return 1
}

# herald's /readyz answers 200 (with Redis: once the backend has been reached).
herald_ready() {
    local status
    status="$("${IN_BROKER[@]}" bash -c "exec 3<>/dev/tcp/127.0.0.1/$HERALD_ADMIN_PORT &&
        printf 'GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3 && head -1 <&3" 2>/dev/null)"
    [[ "$status" == *" 200 "* ]]
}

redis_cli() { "${IN_BROKER[@]}" "$REDIS_CLI" -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

# Redis's `INFO memory` field $1 (bytes).
redis_memory() { { redis_cli info memory 2>/dev/null || true; } | tr -d '\r' | sed -n "s/^$1://p"; }

# A fresh, empty redis-server on core 0 (no snapshots, no AOF, a directory of its own),
# then herald on it; both pids are measured, Redis's apart (--backend-pid).
start_herald_redis() {
    local dir="$SCRATCH/redis" i
    rm -rf "$dir"
    mkdir -p "$dir"
    "${IN_BROKER[@]}" "${PIN_BROKER[@]}" "$REDIS_SERVER" --bind 127.0.0.1 --port "$REDIS_PORT" --protected-mode yes \
        --save '' --appendonly no --dir "$dir" --daemonize no --logfile '' \
        >>"$SCRATCH/redis.log" 2>&1 &
    REDIS_PID=$!
    for i in $(seq 1 100); do
        [ "$(redis_cli ping 2>/dev/null)" = PONG ] && break
        if ! kill -0 "$REDIS_PID" 2>/dev/null || [ "$i" = 100 ]; then
            echo "bench: redis-server did not start:" >&2
            tail -5 "$SCRATCH/redis.log" >&2
            return 1
        fi
        sleep 0.1
    done
    HERALD_ENV="$HERALD_ENV HERALD_BACKEND__KIND=redis HERALD_BACKEND__REDIS__URL=redis://127.0.0.1:$REDIS_PORT"
    start_herald || return 1
    for i in $(seq 1 100); do
        herald_ready && break
        if [ "$i" = 100 ]; then
            echo "bench: herald did not reach Redis:" >&2
            tail -5 "$SCRATCH/herald.log" >&2
            return 1
        fi
        sleep 0.1
    done
    TARGET_PIDS+=(--backend-pid "$REDIS_PID")
}

start_nchan() {
    local dir="$SCRATCH/nginx"
    rm -rf "$dir"
    mkdir -p "$dir/tmp"
    "${IN_BROKER[@]}" "${PIN_BROKER[@]}" "$NGINX" -p "$dir/" -c "$ROOT/bench/nchan.conf" >>"$SCRATCH/nginx.log" 2>&1 &
    NGINX_PID=$!
    if ! wait_port $NCHAN_PORT "$NGINX_PID"; then
        echo "bench: nginx did not start:" >&2
        cat "$SCRATCH/nginx.log" "$dir/error.log" >&2 2>/dev/null || true
        return 1
    fi
    local workers="" i
    for i in $(seq 1 50); do
        workers="$(pgrep -P "$NGINX_PID" || true)"
        [ -n "$workers" ] && break
        sleep 0.1
    done
    TARGET_PIDS=(--target-pid "$NGINX_PID")
    for w in $workers; do TARGET_PIDS+=(--target-pid "$w"); done
}

# One of herald-bench's own servers (`baseline` or `floor`) on $2; its pid goes to $3.
start_tool_server() {
    local kind=$1 port=$2 pid_var=$3
    "${IN_BROKER[@]}" "${PIN_BROKER[@]}" "$BENCH" "$kind" --listen "127.0.0.1:$port" >>"$SCRATCH/$kind.log" 2>&1 &
    printf -v "$pid_var" '%s' "$!"
    if ! wait_port "$port" "$!"; then
        echo "bench: herald-bench $kind did not start:" >&2
        tail -5 "$SCRATCH/$kind.log" >&2
        return 1
    fi
    TARGET_PIDS=(--target-pid "$!")
}

start_baseline() { start_tool_server baseline "$BASELINE_PORT" BASELINE_PID; }
start_floor() { start_tool_server floor "$FLOOR_PORT" FLOOR_PID; }

stop_brokers() {
    local grace=${1:-15}
    stop_pid "$HERALD_PID" "$grace"
    stop_pid "$NGINX_PID" "$grace"
    stop_pid "$BASELINE_PID" "$grace"
    stop_pid "$FLOOR_PID" "$grace"
    # After herald, which would otherwise log a lost connection.
    stop_pid "$REDIS_PID" "$grace"
    HERALD_PID=""
    NGINX_PID=""
    BASELINE_PID=""
    FLOOR_PID=""
    REDIS_PID=""
}

# The load tool's arguments for a workload; empty when the broker does not take part.
workload_args() {
    local workload=$1 broker=$2
    # The floor is a measuring stick for one write per event, not a broker.
    case "$broker:$workload" in
        floor:idle | floor:fanout-2 | floor:fanout-2-python | floor:fanout-50 | floor:publish | floor:publish-pipelined) ;;
        # The independent client's cross-check: herald, Nchan and the floor.
        baseline:fanout-2-python | herald-redis:fanout-2-python) return 0 ;;
        floor:*) return 0 ;;
        # The naive broker sets no TCP_NODELAY: its pipelined answers wait on Nagle's
        # algorithm (2.8k publishes/s measured), which says nothing about brokers.
        baseline:publish-pipelined) return 0 ;;
        # The Redis backend: every workload but the connect storm and coalescing, which
        # do not touch it.
        herald-redis:storm | herald-redis:fanout-50-coalesced) return 0 ;;
    esac
    case "$workload" in
        idle) echo "--subscribers $SUBS --duration 3 --settle 3" ;;
        fanout-2) echo "--subscribers $SUBS --rate 2 --duration 15" ;;
        # The same load, the streams held by bench/sse_client.py (herald-bench publishes).
        fanout-2-python) echo "--subscribers 0 --rate 2 --duration 15 --settle 0" ;;
        fanout-50) echo "--subscribers $SUBS --rate 50 --duration 10" ;;
        # herald with sse.coalesce_window = 250ms: fewer, fuller writes per subscriber.
        fanout-50-coalesced) [ "$broker" = herald ] && echo "--subscribers $SUBS --rate 50 --duration 10" ;;
        publish) echo "--subscribers 0 --flood --duration 5 --settle 0" ;;
        # HTTP/1.1 pipelining: each connection sends 16 requests, then reads the answers.
        publish-pipelined) echo "--subscribers 0 --flood --pipeline 16 --duration 5 --settle 0" ;;
        # Batches are a herald feature.
        publish-batch) [[ "$broker" == herald* ]] && echo "--subscribers 0 --flood --batch $BATCH --duration 5 --settle 0" ;;
        storm) echo "--subscribers $SUBS --connect-rate 10000 --duration 2 --settle 0.5" ;;
        channels-10k) echo "--subscribers $SUBS --channels $SUBS --rate 10000 --duration 10" ;;
    esac
}

# fanout-2-python: bench/sse_client.py holds the $SUBS streams (in the load namespace, on
# the load core) while herald-bench only publishes; its counts and latencies go into the
# run's report as `.crosscheck`, with the broker's CPU per event it received.
start_python_client() {
    local url=$1 i
    rm -f "$SCRATCH/client.out" "$SCRATCH/client.err"
    mkfifo "$SCRATCH/client.in" 2>/dev/null || true
    "${IN_LOAD[@]}" "${PIN_LOAD[@]}" python3 "$ROOT/bench/sse_client.py" "$url" "$SUBS" \
        <"$SCRATCH/client.in" >"$SCRATCH/client.out" 2>"$SCRATCH/client.err" &
    CLIENT_PID=$!
    exec 7>"$SCRATCH/client.in"
    for i in $(seq 1 600); do
        grep -q '^ready' "$SCRATCH/client.err" 2>/dev/null && break
        kill -0 "$CLIENT_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "bench: sse_client.py: $(cat "$SCRATCH/client.err" 2>/dev/null)" >&2
    sleep 1
}

stop_python_client() {
    local report=$1
    [ -n "$CLIENT_PID" ] || return 0
    # herald-bench does not wait for deliveries it does not count: give the last events
    # time to reach the client.
    sleep 3
    echo stop >&7 2>/dev/null || true
    exec 7>&-
    wait "$CLIENT_PID" 2>/dev/null || true
    CLIENT_PID=""
    [ -f "$report" ] && [ -s "$SCRATCH/client.out" ] && command -v jq >/dev/null || return 0
    jq --slurpfile c "$SCRATCH/client.out" '
        .crosscheck = ($c[0] + {
            expected: (.published * $c[0].streams),
            missing: ((.published * $c[0].streams) - $c[0].events),
            process_cpu_us_per_delivery: (if $c[0].events > 0 and .target != null
                then .target.oncpu_s * 1e6 / $c[0].events else null end),
            core_cpu_us_per_delivery: (if $c[0].events > 0 and .broker_core != null
                then .broker_core.awake_s * 1e6 / $c[0].events else null end)})' \
        "$report" >"$report.tmp" && mv "$report.tmp" "$report"
    jq -r '"bench: sse_client.py received \(.crosscheck.events) of \(.crosscheck.expected) events, p99 \(.crosscheck.latency_ms.p99) ms; broker CPU per delivery: process \(.crosscheck.process_cpu_us_per_delivery) us, core \(.crosscheck.core_cpu_us_per_delivery) us"' "$report" >&2
}

# Redis's memory after a run (before: $2, bytes) into its report, as MiB: `.redis`.
record_redis_memory() {
    local report=$1 before=$2 after peak
    after="$(redis_memory used_memory)"
    peak="$(redis_memory used_memory_peak)"
    if ! command -v jq >/dev/null; then
        echo "bench: jq is missing: Redis's used_memory is not recorded (apt-get install jq)" >&2
        return 0
    fi
    [ -f "$report" ] && [ -n "$after" ] || return 0
    jq --argjson before "${before:-0}" --argjson after "$after" --argjson peak "${peak:-0}" \
        '.redis = {used_memory_before_mib: ($before / 1048576), used_memory_mib: ($after / 1048576),
                   used_memory_peak_mib: ($peak / 1048576)}' "$report" >"$report.tmp" &&
        mv "$report.tmp" "$report"
    echo "bench: Redis used_memory $((before / 1024)) KiB before the run, $((after / 1024)) KiB after (peak $((peak / 1024)) KiB)" >&2
}

for workload in $WORKLOADS; do
    case "$workload" in
        idle | fanout-2 | fanout-2-python | fanout-50 | fanout-50-coalesced | publish | publish-pipelined | publish-batch | storm | channels-10k) ;;
        *) echo "bench: unknown workload $workload" >&2; exit 64 ;;
    esac
done

rm -rf "$RUNS"
mkdir -p "$RUNS"
started=$(date +%s)
UPTIME_BEFORE="$(uptime | sed 's/.*load average/load average/')"
case "$REPEAT" in
    '' | *[!0-9]* | 0) echo "bench: BENCH_REPEAT must be a whole number >= 1" >&2; exit 64 ;;
esac
for workload in $WORKLOADS; do
    for rep in $(seq 1 "$REPEAT"); do
        for broker in "${BROKERS[@]}"; do
            args="$(workload_args "$workload" "$broker" || true)"
            [ -n "$args" ] || continue
            HERALD_ENV=""
            [ "$workload" = fanout-50-coalesced ] && HERALD_ENV="HERALD_SSE__COALESCE_WINDOW=250ms"
            wait_quiet
            if ! "start_${broker//-/_}"; then
                echo "bench: skipping $workload / $broker" >&2
                stop_brokers 2
                continue
            fi
            case "$broker" in
                herald | herald-redis)
                    urls=(--subscribe-url "http://127.0.0.1:$HERALD_PORT/events?channel={channel}"
                          --publish-url "http://127.0.0.1:$HERALD_PORT/publish" --publish-format herald) ;;
                nchan)
                    urls=(--subscribe-url "http://127.0.0.1:$NCHAN_PORT/sub?id={channel}"
                          --publish-url "http://127.0.0.1:$NCHAN_PORT/pub?id={channel}" --publish-format raw) ;;
                baseline | floor)
                    port=$BASELINE_PORT
                    [ "$broker" = floor ] && port=$FLOOR_PORT
                    urls=(--subscribe-url "http://127.0.0.1:$port/sub?id={channel}"
                          --publish-url "http://127.0.0.1:$port/pub?id={channel}" --publish-format raw) ;;
            esac
            run="$workload-$broker-$rep"
            [ "$broker" = herald-redis ] && redis_before="$(redis_memory used_memory)"
            [ "$workload" = fanout-2-python ] && start_python_client "${urls[1]}"
            log "$workload / $broker (run $rep of $REPEAT): herald-bench $args"
            # shellcheck disable=SC2086 # $args is a list of flags
            if ! "${IN_LOAD[@]}" "${PIN_LOAD[@]}" "$BENCH" "${urls[@]}" $args "${TARGET_PIDS[@]}" "${CORE_ARGS[@]}" \
                --label "$workload" --broker "$broker" --json "$RUNS/$run.json" \
                2> >(tee "$RUNS/$run.log" >&2); then
                echo "bench: $workload / $broker failed (see $RUNS/$run.log)" >&2
            fi
            [ "$broker" = herald-redis ] && record_redis_memory "$RUNS/$run.json" "$redis_before"
            [ "$workload" = fanout-2-python ] && stop_python_client "$RUNS/$run.json"
            stop_brokers
        done
    done
done

log "side by side (bench/results/latest$SUFFIX.md)"
"$BENCH" compare "$RUNS" --ratio herald-redis/herald --ratio herald/floor \
    --markdown "$RESULTS/latest$SUFFIX.md" --json "$RESULTS/latest$SUFFIX.json" \
    --note "herald $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?'); $("$NGINX" -v 2>&1 | sed 's/^nginx version: //') with $(dpkg-query -W -f='libnginx-mod-nchan ${Version}' libnginx-mod-nchan 2>/dev/null || echo 'Nchan'); $("$REDIS_SERVER" --version 2>/dev/null | cut -d' ' -f1-3 || echo 'no redis-server')" \
    --note "network: $NET$([ "$NET" = veth ] && echo ' (namespaces joined by a veth pair, RPS: receive work of each side on its own core)'); $SUBS streams, ~100-byte events; broker on core 0, load on core 1; $REPEAT run(s) of each; bench/run.sh took $(( $(date +%s) - started )) s" \
    --note "machine load: $UPTIME_BEFORE before, $(uptime | sed 's/.*load average/load average/') after"
