#!/usr/bin/env bash
# What a request costs each way of sharing sessions: `session-cluster bench`
# at a fixed rate with no faults, for replicate (async and sync) on 2, 3 and 5
# nodes, a single Redis and a Redis Cluster (3 primaries, 3 replicas) on 3
# nodes, in interleaved rounds. For each run it reads the CPU (user + system,
# from /proc) of every process the benchmark started — the nodes and the
# redis-servers; not the benchmark's own load generator and balancer — over
# a window in the middle of the run, and prints CPU per request beside the
# benchmark's p99 and anomaly counts.
#
# Environment: RATE (requests/s, default 2000), DURATION (seconds per run,
# default 16; the window is its middle half), ROUNDS (default 2), NODES
# (replicate node counts, default "2 3 5"), SCRATCH_PATH (SwiftPM build
# directory, default .build).
set -euo pipefail

script_dir=$(cd -P "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$script_dir/lib.sh"

RATE=${RATE:-2000}
DURATION=${DURATION:-16}
ROUNDS=${ROUNDS:-2}
NODES=${NODES:-2 3 5}

positive RATE "$RATE"
positive DURATION "$DURATION"
positive ROUNDS "$ROUNDS"
((DURATION >= 8)) || { echo "error: DURATION must be at least 8 (seconds)" >&2; exit 2; }

stop_children() {
    if [[ -n "$child_pid" ]]; then
        stop_pid benchmark "$child_pid"  # it stops its cluster on SIGTERM
        child_pid=""
    fi
}
install_traps

log "checking packages and Swift"
ensure_packages "${build_packages[@]}" redis-server redis-tools
ensure_swift
build_release

tmp_dir=$(mktemp -d "${TMPDIR:-/tmp}/session-cluster-bench-scaling.XXXXXX")
hz=$(getconf CLK_TCK)

# children_cpu PID — CPU ticks so far of PID's children.
children_cpu() {
    local total=0 child ticks
    for child in $(pgrep -P "$1" || true); do
        ticks=$(sed 's/^.*) //' "/proc/$child/stat" 2>/dev/null | awk '{ print $12 + $13 }') || ticks=0
        total=$((total + ${ticks:-0}))
    done
    echo "$total"
}

# measure LABEL BENCH-ARGS... — one run; prints a result line.
measure() {
    local label=$1 out="$tmp_dir/bench.log" c0 c1 t0 t1 i
    shift
    "$binary" bench --no-faults --duration "${DURATION}s" --rate "$RATE" --users 100 \
        --report "$tmp_dir/report" "$@" >"$out" 2>&1 </dev/null &
    child_pid=$!
    for ((i = 0; i < 600; i++)); do  # until the load runs (the cluster is up): up to 60 s
        grep -q "1.0/${DURATION}s" "$out" 2>/dev/null && break
        kill -0 "$child_pid" 2>/dev/null || break
        sleep 0.1
    done
    sleep "$((DURATION / 4))"
    c0=$(children_cpu "$child_pid")
    t0=$(date +%s.%N)
    sleep "$((DURATION / 2))"
    c1=$(children_cpu "$child_pid")
    t1=$(date +%s.%N)
    wait "$child_pid" || { cat "$out" >&2; die "bench failed ($label)"; }
    child_pid=""
    local row
    row=$(grep -A2 '^strategy' "$out" | tail -n 1)
    awk -v l="$label" -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" -v hz="$hz" -v r="$RATE" -v row="$row" 'BEGIN {
        n = split(row, f, " ")
        # row: strategy requests req/s errors lost-sess lost-upd dupl stale p50 p99 ...
        printf "%-34s %10.1f %8s %8s %7s %9s %9s %6s\n", l, (c1 - c0) / hz * 1e6 / (r * (t1 - t0)), f[3], f[10], f[4], f[5], f[6], f[7]
    }'
}

echo
echo "session-cluster bench --no-faults --duration ${DURATION}s --rate $RATE --users 100 --strategies S --nodes N"
echo "CPU: every process the benchmark started (nodes, redis-servers), over the middle half of each run; nproc $(nproc)"
echo
printf '%-34s %10s %8s %8s %7s %9s %9s %6s\n' setup "CPU us/req" "req/s" "p99 ms" errors "lost sess" "lost upd" dupl
for ((round = 1; round <= ROUNDS; round++)); do
    for n in $NODES; do
        measure "replicate-async, $n nodes" --strategies replicate-async --nodes "$n"
        measure "replicate-sync, $n nodes" --strategies replicate-sync --nodes "$n"
    done
    measure "redis, 3 nodes" --strategies redis --nodes 3
    measure "redis-cluster (3+3), 3 nodes" --strategies redis-cluster --nodes 3
done
