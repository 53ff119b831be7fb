#!/usr/bin/env bash
# Benchmark the Redis session store against redis-benchmark, in one run, on a
# private redis-server on loopback: redis-benchmark GET and SET requests/s at
# a concurrency C, then `session-cluster bench-store` (session load+save
# round trips/s through RedisSessionStore) at the same C. Prints both, the
# ratio, latency percentiles, and the CPU each side used.
#
# Environment: DURATION (seconds per measurement, default 10), CONCURRENCY
# (connections / threads, default 50), SESSIONS (default 10000: sessions for
# bench-store, keys for redis-benchmark -r), ATTRIBUTE_BYTES (default 100:
# the session's string attribute, and redis-benchmark -d), SCRATCH_PATH
# (SwiftPM build directory, default .build).
set -euo pipefail

script_dir=$(cd -P "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$script_dir/lib.sh"

DURATION=${DURATION:-10}
CONCURRENCY=${CONCURRENCY:-50}
SESSIONS=${SESSIONS:-10000}
ATTRIBUTE_BYTES=${ATTRIBUTE_BYTES:-100}
TARGET=0.5

positive() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || { echo "error: $1 must be a positive integer, got '$2'" >&2; exit 2; }; }
positive DURATION "$DURATION"
positive CONCURRENCY "$CONCURRENCY"
positive SESSIONS "$SESSIONS"
[[ "$ATTRIBUTE_BYTES" =~ ^[0-9]+$ ]] || { echo "error: ATTRIBUTE_BYTES must be a non-negative integer, got '$ATTRIBUTE_BYTES'" >&2; exit 2; }

client_cpu0=0
client_cpu1=0

stop_children() {
    if [[ -n "$child_pid" ]]; then
        # bench-store stops on SIGTERM and deletes its keys; redis-benchmark just stops.
        stop_pid benchmark "$child_pid"
        child_pid=""
    fi
}
install_traps

rcli() { redis-cli -h 127.0.0.1 -p "$redis_port" "$@"; }

now() { echo "${EPOCHREALTIME:-$(date +%s.%N)}"; }

# CPU seconds (user + system) used so far by a running process.
cpu_of() {
    local ticks
    ticks=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $12 + $13 }') || ticks=0
    awk -v t="${ticks:-0}" -v hz="$clk_tck" 'BEGIN { printf "%.3f", t / hz }'
}

# children_cpu VAR — set VAR to the CPU seconds (user + system) of this
# shell's finished children so far. Not in $(...): a subshell has no children's times.
children_cpu() {
    times >"$tmp_dir/times"
    printf -v "$1" '%s' "$(awk 'NR == 2 {
        n = split($0, f, " "); s = 0
        for (i = 1; i <= n; i++) { v = f[i]; sub(/s$/, "", v); split(v, ms, "m"); s += ms[1] * 60 + ms[2] }
        printf "%.3f", s
    }' "$tmp_dir/times")"
}

# percent USED_SECONDS WALL_SECONDS
percent() { awk -v u="$1" -v w="$2" 'BEGIN { if (w > 0) printf "%.0f%%", 100 * u / w; else printf "-" }'; }

# usec_per_call COMMAND — Redis's own time per call since the last CONFIG RESETSTAT.
usec_per_call() {
    rcli info commandstats | tr -d '\r' | awk -F'[:,=]' -v name="cmdstat_$1" '
        $1 == name { for (i = 2; i < NF; i++) if ($i == "usec_per_call") { print $(i + 1); exit } }'
}

# json_field NAME FILE — a number from bench-store's JSON line.
json_field() {
    sed -n "s/^{.*\"$1\":\([-0-9.a-z]*\).*/\1/p" "$2" | head -n 1
}

log "checking packages and Swift"
ensure_packages "${build_packages[@]}" redis-server redis-tools
ensure_swift

build_release

tmp_dir=$(mktemp -d "${TMPDIR:-/tmp}/session-cluster-bench-redis.XXXXXX")
clk_tck=$(getconf CLK_TCK)
load=$(cut -d' ' -f1-3 /proc/loadavg)
cpus=$(nproc)

# A private redis-server on loopback, no persistence.
start_redis
redis_version=$(rcli info server | tr -d '\r' | sed -n 's/^redis_version://p')

# Should this script be killed with SIGKILL (no trap runs), still stop the
# benchmark and redis-server, and remove the temp dir.
start_watchdog TERM
log "redis-server $redis_version ready (pid $redis_pid)"

# --- redis-benchmark ---------------------------------------------------------

rb=(redis-benchmark -h 127.0.0.1 -p "$redis_port" -c "$CONCURRENCY" -r "$SESSIONS" -d "$ATTRIBUTE_BYTES" -t "set,get" --csv)

# csv_field FILE TEST COLUMN — from redis-benchmark --csv (columns: test, rps, avg, min, p50, p95, p99, max).
csv_field() {
    tr -d '"' <"$1" | awk -F, -v t="$2" -v c="$3" '$1 == t { print $c; exit }'
}

# Calibration (also the warm-up, and it fills the keys GET reads).
calibration_n=$((CONCURRENCY * 400 > 50000 ? CONCURRENCY * 400 : 50000))
log "redis-benchmark: calibration and warm-up ($calibration_n requests per test)"
run --out "$tmp_dir/rb-calibration.csv" "${rb[@]}" -n "$calibration_n" \
    || { cat "$tmp_dir/rb-calibration.csv.err" >&2; die "redis-benchmark failed"; }
cal_get=$(csv_field "$tmp_dir/rb-calibration.csv" GET 2)
cal_set=$(csv_field "$tmp_dir/rb-calibration.csv" SET 2)
[[ -n "$cal_get" && -n "$cal_set" ]] || { cat "$tmp_dir/rb-calibration.csv" >&2; die "could not parse redis-benchmark output"; }
requests=$(awk -v g="$cal_get" -v s="$cal_set" -v d="$DURATION" 'BEGIN { n = int((g + s) / 2 * d); if (n < 10000) n = 10000; print n }')

log "redis-benchmark: SET then GET, $requests requests each (~${DURATION}s each), $CONCURRENCY connections"
rcli config resetstat >/dev/null
redis_cpu0=$(cpu_of "$redis_pid")
children_cpu client_cpu0
t0=$(now)
run --out "$tmp_dir/rb.csv" "${rb[@]}" -n "$requests" \
    || { cat "$tmp_dir/rb.csv.err" >&2; die "redis-benchmark failed"; }
t1=$(now)
rb_wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
rb_redis_cpu=$(percent "$(awk -v a="$redis_cpu0" -v b="$(cpu_of "$redis_pid")" 'BEGIN { print b - a }')" "$rb_wall")
children_cpu client_cpu1
rb_client_cpu=$(percent "$(awk -v a="$client_cpu0" -v b="$client_cpu1" 'BEGIN { print b - a }')" "$rb_wall")
get_rps=$(csv_field "$tmp_dir/rb.csv" GET 2)
set_rps=$(csv_field "$tmp_dir/rb.csv" SET 2)
[[ -n "$get_rps" && -n "$set_rps" ]] || { cat "$tmp_dir/rb.csv" >&2; die "could not parse redis-benchmark output"; }
get_p50=$(csv_field "$tmp_dir/rb.csv" GET 5)
get_p99=$(csv_field "$tmp_dir/rb.csv" GET 7)
set_p50=$(csv_field "$tmp_dir/rb.csv" SET 5)
set_p99=$(csv_field "$tmp_dir/rb.csv" SET 7)
get_us=$(usec_per_call get)
set_us=$(usec_per_call set)
rcli flushall >/dev/null

# --- bench-store -------------------------------------------------------------

bs=("$binary" bench-store --redis "redis://127.0.0.1:$redis_port" --concurrency "$CONCURRENCY" --duration "$DURATION"
    --sessions "$SESSIONS" --attribute-bytes "$ATTRIBUTE_BYTES")
log "bench-store: $SESSIONS sessions, 1s warm-up, ${DURATION}s, $CONCURRENCY threads"
rcli config resetstat >/dev/null
redis_cpu0=$(cpu_of "$redis_pid")
children_cpu client_cpu0
t0=$(now)
run --out "$tmp_dir/bs.out" "${bs[@]}" \
    || { cat "$tmp_dir/bs.out" "$tmp_dir/bs.out.err" >&2; die "bench-store failed"; }
t1=$(now)
bs_wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
bs_redis_cpu=$(percent "$(awk -v a="$redis_cpu0" -v b="$(cpu_of "$redis_pid")" 'BEGIN { print b - a }')" "$bs_wall")
children_cpu client_cpu1
bs_client_cpu=$(percent "$(awk -v a="$client_cpu0" -v b="$client_cpu1" 'BEGIN { print b - a }')" "$bs_wall")
bs_rps=$(json_field round_trips_per_s "$tmp_dir/bs.out")
bs_p50=$(json_field p50_ms "$tmp_dir/bs.out")
bs_p99=$(json_field p99_ms "$tmp_dir/bs.out")
bs_errors=$(json_field errors "$tmp_dir/bs.out")
[[ -n "$bs_rps" && -n "$bs_errors" ]] || { cat "$tmp_dir/bs.out" "$tmp_dir/bs.out.err" >&2; die "could not parse bench-store output"; }
evalsha_us=$(usec_per_call evalsha)
left=$(rcli dbsize | tr -d '\r')

# --- report ------------------------------------------------------------------

mean_rps=$(awk -v g="$get_rps" -v s="$set_rps" 'BEGIN { printf "%.2f", (g + s) / 2 }')
slower_name=GET slower_rps=$get_rps
if awk -v g="$get_rps" -v s="$set_rps" 'BEGIN { exit !(s < g) }'; then slower_name=SET slower_rps=$set_rps; fi
ratio=$(awk -v a="$bs_rps" -v b="$mean_rps" 'BEGIN { printf "%.2f", a / b }')
ratio_slower=$(awk -v a="$bs_rps" -v b="$slower_rps" 'BEGIN { printf "%.2f", a / b }')
verdict=$(awk -v r="$ratio" -v t="$TARGET" 'BEGIN { print (r >= t ? "met" : "NOT met") }')
# A bare GET then SET per round trip, at the measured rates: 1 / (1/GET + 1/SET) pairs per second.
pair_rps=$(awk -v g="$get_rps" -v s="$set_rps" 'BEGIN { printf "%.2f", 1 / (1 / g + 1 / s) }')
ratio_pair=$(awk -v a="$bs_rps" -v b="$pair_rps" 'BEGIN { printf "%.2f", a / b }')
rt_us=$(awk -v e="${evalsha_us:-0}" 'BEGIN { printf "%.2f", 2 * e }')

echo
echo "nproc: $cpus    load average before the run: $load    redis-server $redis_version on 127.0.0.1:$redis_port (--save '' --appendonly no)"
echo "redis-benchmark: ${rb[*]} -n $requests"
echo "bench-store:     ${bs[*]}"
echo
printf '%-34s %12s %9s %9s %10s %11s %15s\n' measurement "ops/s" "p50 (ms)" "p99 (ms)" "redis CPU" "client CPU" "redis us/call"
printf '%-34s %12s %9s %9s %10s %11s %15s\n' "redis-benchmark GET" "$get_rps" "$get_p50" "$get_p99" "$rb_redis_cpu" "$rb_client_cpu" "${get_us:-?}"
printf '%-34s %12s %9s %9s %10s %11s %15s\n' "redis-benchmark SET" "$set_rps" "$set_p50" "$set_p99" "" "" "${set_us:-?}"
printf '%-34s %12s\n' "mean of GET and SET" "$mean_rps"
printf '%-34s %12s %9s %9s %10s %11s %15s\n' "bench-store load+save round trips" "$bs_rps" "$bs_p50" "$bs_p99" "$bs_redis_cpu" "$bs_client_cpu" "$rt_us/rt"
echo
printf 'ratio  round trips/s / mean(GET, SET) rps     %sx   (target >= %sx: %s)\n' "$ratio" "$TARGET" "$verdict"
printf 'ratio  round trips/s / slower (%s) rps        %sx\n' "$slower_name" "$ratio_slower"
printf 'ratio  round trips/s / GET+SET pairs/s (%s)  %sx   (1.0x = a round trip costs one bare GET plus one bare SET)\n' "$pair_rps" "$ratio_pair"
echo
echo "How to read it: a round trip is what one request costs the store: a load (a read, like GET) and a"
echo "save (a write, like SET), i.e. two Redis commands (HGETALL for the load, EVALSHA of the apply"
echo "script). So round trips/s are compared with the mean of GET and SET requests/s: a client doing a"
echo "bare GET then SET per round trip at the same concurrency would reach about 0.5x, so the target"
echo ">= 0.5x means the session store costs no more than a bare GET+SET pair. 'redis us/call' is Redis's"
echo "own time per command (INFO commandstats; for bench-store, the HGETALL and the EVALSHA per round trip, Lua"
echo "included); 'redis CPU' and 'client CPU' are CPU time over wall time of each phase (100% = one core;"
echo "bench-store's client CPU includes its session set-up and 1s warm-up). Everything shares $cpus CPUs."
echo
echo "bench-store errors: $bs_errors    keys left in redis after bench-store: $left"
echo "bench-store said:"
sed 's/^/    /' "$tmp_dir/bs.out" "$tmp_dir/bs.out.err"
