#!/usr/bin/env bash
# Benchmark one session-cluster node against a trivial nginx on loopback,
# with wrk: nginx `/`, node `/healthz`, node `/api/session` with a session
# cookie. Prints req/s, p99 latency, the ratio to nginx (targets: /healthz
# >= 1.0x, /api/session >= 0.8x), CPU time and context switches per request
# of the server (the node's threads; nginx's workers), and the node's RSS.
#
# Environment: DURATION (seconds per run, default 10), ROUNDS (interleaved
# rounds, the median is reported, default 3), CONNECTIONS (default
# 50), SCRATCH_PATH (SwiftPM build directory, default .build).
set -euo pipefail

script_dir=$(cd -P "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$script_dir/lib.sh"

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-50}
WARMUP=2
THREADS=2

[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "error: ROUNDS must be a positive integer, got '$ROUNDS'" >&2; exit 2; }
[[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || { echo "error: DURATION must be a positive integer (seconds), got '$DURATION'" >&2; exit 2; }
[[ "$CONNECTIONS" =~ ^[1-9][0-9]*$ ]] || { echo "error: CONNECTIONS must be a positive integer, got '$CONNECTIONS'" >&2; exit 2; }
((CONNECTIONS >= THREADS)) || { echo "error: CONNECTIONS must be at least $THREADS (wrk threads)" >&2; exit 2; }

node_pid=""
nginx_pid=""
wrk_pid=""

stop_children() {
    if [[ -n "$wrk_pid" ]]; then
        kill_wait "$wrk_pid"
        wrk_pid=""
    fi
    if [[ -n "$nginx_pid" ]]; then
        stop_pid nginx "$nginx_pid"
        nginx_pid=""
    fi
    if [[ -n "$node_pid" ]]; then
        stop_pid session-cluster "$node_pid"
        node_pid=""
    fi
}
install_traps

# Results, one entry per target.
declare -a r_name=() r_rps=() r_p99=() r_non2xx=() r_sockerr=() r_peak=() r_cpu=() r_cs=()
clk_tck=$(getconf CLK_TCK 2>/dev/null || echo 100)

# bench NAME SAMPLE_PID SERVER_PIDS URL [wrk args...] — warm-up, then the measured run;
# SERVER_PIDS (space-separated) are the processes whose CPU and context switches count.
bench() {
    local name=$1 sample_pid=$2 server_pids=$3 url=$4 out rps p99 non2xx sockerr before after requests
    shift 4
    out="$tmp_dir/wrk-${#r_name[@]}.txt"
    log "$name: warm-up ${WARMUP}s"
    run_wrk "$out.warmup" "$WARMUP" "$CONNECTIONS" "$sample_pid" "$url" "$@"
    local warm_peak=$PEAK_KB
    log "$name: ${DURATION}s, $CONNECTIONS connections"
    # shellcheck disable=SC2086 # a list of PIDs
    before=$(proc_counts $server_pids)
    run_wrk "$out" "$DURATION" "$CONNECTIONS" "$sample_pid" "$url" "$@"
    # shellcheck disable=SC2086
    after=$(proc_counts $server_pids)
    ((warm_peak > PEAK_KB)) && PEAK_KB=$warm_peak
    requests=$(awk '/ requests in / { print $1 }' "$out")
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    p99=$(awk '$1 == "99%" { print $2 }' "$out")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")
    sockerr=$(awk '/Socket errors:/ { gsub(/,/, ""); print $4 + $6 + $8 + $10 }' "$out")
    if [[ -z "$rps" || -z "$p99" ]]; then
        cat "$out" >&2
        die "could not parse wrk output for $name"
    fi
    r_name+=("$name")
    r_rps+=("$rps")
    r_p99+=("$(to_ms "$p99")")
    r_non2xx+=("${non2xx:-0}")
    r_sockerr+=("${sockerr:-0}")
    # Per request: CPU microseconds and context switches of the server's threads.
    r_cpu+=("$(awk -v b="$before" -v a="$after" -v hz="$clk_tck" -v n="${requests:-0}" \
        'BEGIN { split(b, x, " "); split(a, y, " "); printf "%.2f", (n > 0 ? (y[2] - x[2]) * 1e6 / hz / n : 0) }')")
    r_cs+=("$(awk -v b="$before" -v a="$after" -v n="${requests:-0}" \
        'BEGIN { split(b, x, " "); split(a, y, " "); printf "%.3f", (n > 0 ? (y[1] - x[1]) / n : 0) }')")
    if [[ -n "$sample_pid" ]]; then
        r_peak+=("$(kb_to_mb "$PEAK_KB")")
    else
        r_peak+=("-")
    fi
}

log "checking packages and Swift"
ensure_packages "${build_packages[@]}" wrk nginx curl
ensure_swift
command -v nginx >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin"
command -v nginx >/dev/null 2>&1 || die "nginx is installed but not on PATH"

build_release

tmp_dir=$(mktemp -d "${TMPDIR:-/tmp}/session-cluster-bench.XXXXXX")
cpus=$(nproc)
load=$(cut -d" " -f1-3 /proc/loadavg)

# The node.
node_port=$(free_port) || die "no free loopback port"
log "starting node on 127.0.0.1:$node_port"
"$binary" node --port "$node_port" --node-id bench --log-level warning \
    >"$tmp_dir/node.log" 2>&1 </dev/null &
node_pid=$!
if ! wait_http node "http://127.0.0.1:$node_port/healthz" "$node_pid"; then
    tail -n 20 "$tmp_dir/node.log" >&2 || true
    die "the node did not start"
fi

# nginx, as a child, with its own configuration and paths.
nginx_port=$(free_port) || die "no free loopback port"
while [[ "$nginx_port" == "$node_port" ]]; do nginx_port=$(free_port); done
mkdir -p "$tmp_dir/nginx/logs"
cat >"$tmp_dir/nginx/nginx.conf" <<NGINX
worker_processes $cpus;
daemon off;
master_process on;
pid $tmp_dir/nginx/nginx.pid;
error_log $tmp_dir/nginx/logs/error.log warn;

events {
    worker_connections 4096;
}

http {
    access_log off;
    client_body_temp_path $tmp_dir/nginx/client_body;
    proxy_temp_path $tmp_dir/nginx/proxy;
    fastcgi_temp_path $tmp_dir/nginx/fastcgi;
    uwsgi_temp_path $tmp_dir/nginx/uwsgi;
    scgi_temp_path $tmp_dir/nginx/scgi;
    keepalive_requests 100000;

    server {
        listen 127.0.0.1:$nginx_port;
        location / {
            return 200 "ok\n";
        }
    }
}
NGINX
nginx_args=(-p "$tmp_dir/nginx/" -c "$tmp_dir/nginx/nginx.conf" -e "$tmp_dir/nginx/logs/error.log")
if ! nginx -t -q "${nginx_args[@]}" 2>"$tmp_dir/nginx-t.log"; then
    cat "$tmp_dir/nginx-t.log" >&2
    die "the generated nginx configuration is invalid"
fi
log "starting nginx on 127.0.0.1:$nginx_port ($cpus workers)"
nginx "${nginx_args[@]}" </dev/null &
nginx_pid=$!
if ! wait_http nginx "http://127.0.0.1:$nginx_port/" "$nginx_pid"; then
    tail -n 20 "$tmp_dir/nginx/logs/error.log" >&2 || true
    die "nginx did not start"
fi

nginx_workers=$(pgrep -P "$nginx_pid" | tr '\n' ' ')
[[ -n "$nginx_workers" ]] || die "no nginx worker processes found (master pid $nginx_pid)"

# A session cookie for /api/session.
node_url="http://127.0.0.1:$node_port"
curl -fsS -o /dev/null -c "$tmp_dir/jar" -X POST "$node_url/api/counter" \
    || die "POST $node_url/api/counter failed"
sid=$(awk '$6 == "sid" { print $7 }' "$tmp_dir/jar")
[[ -n "$sid" ]] || die "no 'sid' cookie from POST /api/counter"
session_body=$(curl -fsS -H "Cookie: sid=$sid" "$node_url/api/session") \
    || die "GET $node_url/api/session with the cookie failed"
log "session cookie ok: GET /api/session -> $session_body"

sleep 1
idle_kb=$(rss_kb "$node_pid")

# Interleaved rounds: on a small shared machine one run can be 30% off; the median of rounds is steadier.
for ((round = 1; round <= ROUNDS; round++)); do
    log "round $round of $ROUNDS"
    bench "nginx /" "" "$nginx_workers" "http://127.0.0.1:$nginx_port/"
    bench "node /healthz" "$node_pid" "$node_pid" "$node_url/healthz"
    bench "node /api/session" "$node_pid" "$node_pid" "$node_url/api/session" -H "Cookie: sid=$sid"
done
targets=3

kill -0 "$node_pid" 2>/dev/null || { tail -n 20 "$tmp_dir/node.log" >&2; die "the node died during the benchmark"; }
after_kb=$(rss_kb "$node_pid")
peak_kb=0
for p in "${r_peak[@]}"; do
    [[ "$p" == "-" ]] && continue
    kb=$(awk -v mb="$p" 'BEGIN { printf "%d", mb * 1024 }')
    ((kb > peak_kb)) && peak_kb=$kb
done

echo
echo "nproc: $cpus    kernel: $(uname -r)    date: $(date -u +%F)    load average before the run: $load"
echo "wrk:   $ROUNDS rounds of: wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency URL   (+ -H 'Cookie: sid=…' for /api/session; ${WARMUP}s warm-up before each)"
echo
declare -a m_rps=() m_p99=() m_range=() m_cpu=() m_cs=()
for ((t = 0; t < targets; t++)); do
    rps_list=() p99_list=() cpu_list=() cs_list=()
    for ((i = t; i < ${#r_name[@]}; i += targets)); do
        rps_list+=("${r_rps[$i]}")
        p99_list+=("${r_p99[$i]}")
        cpu_list+=("${r_cpu[$i]}")
        cs_list+=("${r_cs[$i]}")
    done
    m_rps+=("$(median "${rps_list[@]}")")
    m_p99+=("$(median "${p99_list[@]}")")
    m_cpu+=("$(median "${cpu_list[@]}")")
    m_cs+=("$(median "${cs_list[@]}")")
    m_range+=("$(printf '%s\n' "${rps_list[@]}" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.0f-%.0f", lo, hi }')")
done
nginx_rps=${m_rps[0]}
echo "median of $ROUNDS interleaved rounds per target:"
printf '%-20s %12s %15s %10s %10s %11s %11s %9s %9s %14s   %s\n' target "req/s" "range" "p99 (ms)" "vs nginx" "cpu us/req" "cswitch/req" \
    "non-2xx" "sock err" "node peak MB" "target"
targets_met=0
for ((t = 0; t < targets; t++)); do
    ratio=$(awk -v a="${m_rps[$t]}" -v b="$nginx_rps" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else printf "-" }')
    case $t in
        0) goal="" ;;
        1) goal=1.0 ;;
        *) goal=0.8 ;;
    esac
    verdict="(the reference)"
    if [[ -n "$goal" ]]; then
        if awk -v a="${m_rps[$t]}" -v b="$nginx_rps" -v g="$goal" 'BEGIN { exit !(b > 0 && a / b >= g) }'; then
            verdict=">= ${goal}x: met"
            targets_met=$((targets_met + 1))
        else
            verdict=">= ${goal}x: NOT met"
        fi
    fi
    non2xx=0 sockerr=0 peak="-"
    for ((i = t; i < ${#r_name[@]}; i += targets)); do
        non2xx=$((non2xx + r_non2xx[i]))
        sockerr=$((sockerr + r_sockerr[i]))
        [[ "${r_peak[$i]}" != "-" ]] && peak=${r_peak[$i]}
    done
    printf '%-20s %12s %15s %10s %10s %11s %11s %9s %9s %14s   %s\n' "${r_name[$t]}" "${m_rps[$t]}" "${m_range[$t]}" "${m_p99[$t]}" \
        "$ratio" "${m_cpu[$t]}" "${m_cs[$t]}" "$non2xx" "$sockerr" "$peak" "$verdict"
done
echo "(cpu us/req: user + system CPU time of the server per request; cswitch/req: its threads' context"
echo " switches, voluntary + involuntary, per request; the server: nginx's $(wc -w <<<"$nginx_workers") workers, the node's threads)"
echo "targets met: $targets_met of $((targets - 1))"
echo
echo "node RSS: idle before load $(kb_to_mb "$idle_kb") MB, peak under load $(kb_to_mb "$peak_kb") MB, after load $(kb_to_mb "$after_kb") MB"
if [[ -s "$tmp_dir/node.log" ]]; then
    echo
    echo "node log (warnings and above, last 10 lines):"
    tail -n 10 "$tmp_dir/node.log"
fi
