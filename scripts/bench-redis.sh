#!/usr/bin/env bash
# Benchmark the Redis session store against redis-benchmark, in one run, on a
# private redis-server on loopback: redis-benchmark GET, then SET, requests/s
# at a concurrency C, then `session-cluster bench-store` (session load+save
# round trips/s through RedisSessionStore, its commands automatically
# pipelined) at the same C. Prints both, the ratio, latency percentiles, the
# CPU each side used, and Redis's CPU time per request (INFO cpu, divided by
# requests): per GET, per SET, per session round trip. A third bench-store run
# logs every session in first (--logged-in): the cost of the principal index
# on requests that do not log in or out — Redis commands and CPU per round
# trip beside the run without.
#
# Environment: DURATION (seconds per measurement, default 10), CONCURRENCY
# (connections / threads, default 50), SESSIONS (default 10000: sessions for
# bench-store, keys for redis-benchmark -r), ATTRIBUTE_BYTES (default 100:
# the session's string attribute, and redis-benchmark -d), SCRATCH_PATH
# (SwiftPM build directory, default .build), PIPELINE_CONNECTIONS (default 2:
# bench-store's shared connections; a second run without pipelining follows).
set -euo pipefail

script_dir=$(cd -P "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$script_dir/lib.sh"

DURATION=${DURATION:-10}
CONCURRENCY=${CONCURRENCY:-50}
SESSIONS=${SESSIONS:-10000}
ATTRIBUTE_BYTES=${ATTRIBUTE_BYTES:-100}
TARGET=1.0       # round trips/s over the mean of GET and SET requests/s
CPU_TARGET=1.5   # Redis CPU per round trip over Redis CPU per GET, at most

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

# redis_cpu — Redis's CPU seconds so far (INFO cpu: used_cpu_sys + used_cpu_user).
redis_cpu() {
    rcli info cpu | tr -d '\r' | awk -F: '$1 == "used_cpu_sys" || $1 == "used_cpu_user" { s += $2 } END { printf "%.6f", s }'
}

# us_per REQUESTS CPU0 CPU1 — microseconds of CPU per request.
us_per() { awk -v n="$1" -v a="$2" -v b="$3" 'BEGIN { if (n > 0) printf "%.2f", (b - a) * 1e6 / n; else printf "-" }'; }

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

log "redis-benchmark: GET then SET, $requests requests each (~${DURATION}s each), $CONCURRENCY connections"
rcli config resetstat >/dev/null
redis_cpu0=$(cpu_of "$redis_pid")
children_cpu client_cpu0
t0=$(now)
get_cpu0=$(redis_cpu)
run --out "$tmp_dir/rb-get.csv" "${rb[@]/set,get/get}" -n "$requests" \
    || { cat "$tmp_dir/rb-get.csv.err" >&2; die "redis-benchmark failed"; }
get_cpu1=$(redis_cpu)
run --out "$tmp_dir/rb-set.csv" "${rb[@]/set,get/set}" -n "$requests" \
    || { cat "$tmp_dir/rb-set.csv.err" >&2; die "redis-benchmark failed"; }
set_cpu1=$(redis_cpu)
cat "$tmp_dir/rb-get.csv" "$tmp_dir/rb-set.csv" >"$tmp_dir/rb.csv"
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
get_cpu_us=$(us_per "$requests" "$get_cpu0" "$get_cpu1")
set_cpu_us=$(us_per "$requests" "$get_cpu1" "$set_cpu1")
rcli flushall >/dev/null

# --- bench-store -------------------------------------------------------------

# bench_store NAME PIPELINE_CONNECTIONS — one bench-store run; sets bs_NAME_* (rps, p50, p99, errors,
# redis_cpu (percent of wall), client_cpu, cpu_us (Redis CPU per round trip, measured window), call_us).
bench_store() {
    local name=$1 pipelines=$2 t0 t1 wall cpu0 c0 c1 out="$tmp_dir/bs-$1.out"
    local cmd=("$binary" bench-store --redis "redis://127.0.0.1:$redis_port" --concurrency "$CONCURRENCY"
        --duration "$DURATION" --sessions "$SESSIONS" --attribute-bytes "$ATTRIBUTE_BYTES" --pipeline-connections "$pipelines"
        "${@:3}")
    log "bench-store ($name): $SESSIONS sessions, 1s warm-up, ${DURATION}s, $CONCURRENCY threads, $pipelines pipelined connections"
    rcli config resetstat >/dev/null
    cpu0=$(cpu_of "$redis_pid")
    children_cpu c0
    t0=$(now)
    run --out "$out" "${cmd[@]}" || { cat "$out" "$out.err" >&2; die "bench-store failed"; }
    t1=$(now)
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    printf -v "bs_${name}_redis_cpu" '%s' "$(percent "$(awk -v a="$cpu0" -v b="$(cpu_of "$redis_pid")" 'BEGIN { print b - a }')" "$wall")"
    children_cpu c1
    printf -v "bs_${name}_client_cpu" '%s' "$(percent "$(awk -v a="$c0" -v b="$c1" 'BEGIN { print b - a }')" "$wall")"
    local field
    for field in round_trips_per_s p50_ms p99_ms errors redis_cpu_us_per_round_trip redis_commands_per_round_trip \
        redis_calls_per_round_trip; do
        printf -v "bs_${name}_${field}" '%s' "$(json_field "$field" "$out")"
    done
    local rps="bs_${name}_round_trips_per_s" errors="bs_${name}_errors"
    [[ -n "${!rps}" && -n "${!errors}" ]] || { cat "$out" "$out.err" >&2; die "could not parse bench-store output"; }
    printf -v "bs_${name}_call_us" '%s' "$(awk -v h="$(usec_per_call hgetall)" -v e="$(usec_per_call evalsha)" \
        'BEGIN { printf "%.2f", h + e }')"
    printf -v "bs_${name}_cmd" '%s' "${cmd[*]}"
}

bench_store piped "${PIPELINE_CONNECTIONS:-2}"
bench_store unpiped 0
bench_store loggedin "${PIPELINE_CONNECTIONS:-2}" --logged-in
left=$(rcli dbsize | tr -d '\r')

# --- report ------------------------------------------------------------------

mean_rps=$(awk -v g="$get_rps" -v s="$set_rps" 'BEGIN { printf "%.2f", (g + s) / 2 }')
ratio=$(awk -v a="$bs_piped_round_trips_per_s" -v b="$mean_rps" 'BEGIN { printf "%.2f", a / b }')
ratio_unpiped=$(awk -v a="$bs_unpiped_round_trips_per_s" -v b="$mean_rps" 'BEGIN { printf "%.2f", a / b }')
verdict=$(awk -v r="$ratio" -v t="$TARGET" 'BEGIN { print (r >= t ? "met" : "NOT met") }')
cpu_ratio=$(awk -v a="${bs_piped_redis_cpu_us_per_round_trip:-0}" -v b="$get_cpu_us" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
cpu_ratio_unpiped=$(awk -v a="${bs_unpiped_redis_cpu_us_per_round_trip:-0}" -v b="$get_cpu_us" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
cpu_verdict=$(awk -v r="$cpu_ratio" -v t="$CPU_TARGET" 'BEGIN { print (r != "-" && r <= t ? "met" : "NOT met") }')

row() { printf '%-40s %11s %9s %9s %10s %11s %13s %13s\n' "$@"; }
echo
echo "nproc: $cpus    load average before the run: $load    redis-server $redis_version on 127.0.0.1:$redis_port (--save '' --appendonly no)"
echo "redis-benchmark: ${rb[*]/set,get/get|set} -n $requests"
echo "bench-store:     $bs_piped_cmd"
echo "                 (and --pipeline-connections 0)"
echo
row measurement "ops/s" "p50 (ms)" "p99 (ms)" "redis CPU" "client CPU" "redis CPU us" "redis us/call"
row "redis-benchmark GET" "$get_rps" "$get_p50" "$get_p99" "$rb_redis_cpu" "$rb_client_cpu" "$get_cpu_us/req" "${get_us:-?}"
row "redis-benchmark SET" "$set_rps" "$set_p50" "$set_p99" "" "" "$set_cpu_us/req" "${set_us:-?}"
row "mean of GET and SET" "$mean_rps" "" "" "" "" "" ""
row "bench-store round trips, pipelined" "$bs_piped_round_trips_per_s" "$bs_piped_p50_ms" "$bs_piped_p99_ms" "$bs_piped_redis_cpu" \
    "$bs_piped_client_cpu" "${bs_piped_redis_cpu_us_per_round_trip:-?}/rt" "$bs_piped_call_us/rt"
row "bench-store round trips, not pipelined" "$bs_unpiped_round_trips_per_s" "$bs_unpiped_p50_ms" "$bs_unpiped_p99_ms" "$bs_unpiped_redis_cpu" \
    "$bs_unpiped_client_cpu" "${bs_unpiped_redis_cpu_us_per_round_trip:-?}/rt" "$bs_unpiped_call_us/rt"
row "bench-store, logged-in users, pipelined" "$bs_loggedin_round_trips_per_s" "$bs_loggedin_p50_ms" "$bs_loggedin_p99_ms" "$bs_loggedin_redis_cpu" \
    "$bs_loggedin_client_cpu" "${bs_loggedin_redis_cpu_us_per_round_trip:-?}/rt" "$bs_loggedin_call_us/rt"
echo
printf 'ratio  round trips/s / mean(GET, SET) rps       %sx   (target >= %sx: %s; not pipelined %sx)\n' \
    "$ratio" "$TARGET" "$verdict" "$ratio_unpiped"
printf 'ratio  Redis CPU per round trip / per GET       %sx   (target <= %sx: %s; not pipelined %sx)\n' \
    "$cpu_ratio" "$CPU_TARGET" "$cpu_verdict" "$cpu_ratio_unpiped"
printf 'principal index: commands sent per round trip %s logged in, %s not (target: no extra command);\n' \
    "${bs_loggedin_redis_commands_per_round_trip:-?}" "${bs_piped_redis_commands_per_round_trip:-?}"
printf '                 Redis calls per round trip, inside scripts too, %s vs %s; Redis CPU per round trip %sx\n' \
    "${bs_loggedin_redis_calls_per_round_trip:-?}" "${bs_piped_redis_calls_per_round_trip:-?}" \
    "$(awk -v a="${bs_loggedin_redis_cpu_us_per_round_trip:-0}" -v b="${bs_piped_redis_cpu_us_per_round_trip:-0}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')"
echo
echo "How to read it: a round trip is what one request costs the store: a load (HGETALL) and a save"
echo "(EVALSHA of the apply script, Lua). The target asks a round trip to go as fast as one bare GET or"
echo "SET at the same concurrency, and to cost Redis at most 1.5 times the CPU of one GET. 'redis CPU us'"
echo "is Redis's CPU time (INFO cpu: user + system) per request over the measured window, so it includes"
echo "the system calls that pipelining saves; 'redis us/call' is Redis's own time per command (INFO"
echo "commandstats: HGETALL + EVALSHA per round trip, Lua included, no system calls). 'redis CPU' and"
echo "'client CPU' are CPU time over wall time of each phase (100% = one core; bench-store's include its"
echo "session set-up and 1s warm-up). Everything shares $cpus CPUs."
echo
echo "bench-store errors: $bs_piped_errors (pipelined), $bs_unpiped_errors (not)    keys left in redis: $left"
echo "bench-store said:"
sed 's/^/    /' "$tmp_dir/bs-piped.out" "$tmp_dir/bs-unpiped.out" "$tmp_dir/bs-loggedin.out"
