#!/usr/bin/env bash
# Benchmark the balancer (`session-cluster proxy`) against HAProxy on
# loopback, in one run:
#   1. wrk through HAProxy and through our balancer, in front of the same 3
#      `session-cluster node --strategy local` backends (GET /healthz, which is
#      cheap), at 50 and at 1,000 connections, interleaved rounds: median
#      requests/s and p99, and the ratio ours / HAProxy. HAProxy: nbthread =
#      cores, balance roundrobin, keep-alive on both sides (http-keep-alive,
#      http-reuse always), `option forwardfor` (ours adds forwarding headers
#      too), no logging. Ours: --event-loops = cores.
#   2. our balancer's RSS (VmRSS) before and while IDLE_CLIENTS (10,000) idle
#      keep-alive clients are connected, each having completed one request
#      (a small Python client), and whether fresh curls through the balancer
#      still get answers meanwhile.
# Prints a summary with the targets: throughput >= 1.2x HAProxy's and p99 <=
# HAProxy's at both concurrencies; RSS with the idle clients <= 100 MB.
# Installs wrk and haproxy with apt-get when missing.
#
# Environment: DURATION (seconds per wrk run, default 8), ROUNDS (interleaved
# rounds, the median is reported, default 3), IDLE_CLIENTS (default 10000),
# SCRATCH_PATH (SwiftPM build directory, default .build).
set -euo pipefail

script_dir=$(cd -P "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$script_dir/lib.sh"

DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
IDLE_CLIENTS=${IDLE_CLIENTS:-10000}
CONCURRENCIES=(50 1000)
WARMUP=2
THREADS=2
RSS_TARGET_MB=100
RATIO_TARGET=1.2  # ours / HAProxy, requests/s, at every concurrency
BACKENDS=3

positive DURATION "$DURATION"
positive ROUNDS "$ROUNDS"
positive IDLE_CLIENTS "$IDLE_CLIENTS"

# Descriptors: the idle clients (and the balancer, which inherits this limit)
# need IDLE_CLIENTS + headroom; raise the soft limit up to the hard one.
fd_headroom=2000
fd_hard=$(ulimit -Hn)
if [[ "$fd_hard" == unlimited ]]; then
    ulimit -n $((IDLE_CLIENTS + fd_headroom)) 2>/dev/null || ulimit -n 65536 2>/dev/null || true
else
    ulimit -n "$fd_hard" 2>/dev/null || true
fi
fd_soft=$(ulimit -n)
if [[ "$fd_soft" != unlimited ]] && ((fd_soft < IDLE_CLIENTS + fd_headroom)); then
    reduced=$((fd_soft - fd_headroom))
    ((reduced > 0)) || die "the descriptor limit ($fd_soft, hard $fd_hard) is too low for this benchmark"
    printf 'warning: the descriptor limit (soft %s, hard %s) allows %s idle clients, not %s\n' \
        "$fd_soft" "$fd_hard" "$reduced" "$IDLE_CLIENTS" >&2
    IDLE_CLIENTS=$reduced
fi

declare -a backend_port=() backend_pid=()
haproxy_pid=""
proxy_pid=""
wrk_pid=""
idle_pid=""

# The PIDs of every child, for the watchdog.
save_pids() {
    [[ -n "$tmp_dir" ]] || return 0
    printf '%s\n' "$wrk_pid" "$idle_pid" "$proxy_pid" "$haproxy_pid" "${backend_pid[@]}" >"$tmp_dir/pids"
}

stop_children() {
    local i
    if [[ -n "$wrk_pid" ]]; then
        kill_wait "$wrk_pid"
        wrk_pid=""
    fi
    stop_named idle-clients idle_pid
    stop_named "session-cluster proxy" proxy_pid
    stop_named haproxy haproxy_pid
    for i in "${!backend_pid[@]}"; do stop_named "backend n$((i + 1))" "backend_pid[$i]"; done
    save_pids
}
install_traps

# The backends' CPU ticks together.
backends_cpu_ticks() { sum_cpu_ticks "${backend_pid[@]}"; }

on_wrk_pid() { save_pids; }

# Results, one entry per run: target (haproxy, ours), connections, numbers.
declare -a r_target=() r_conns=() r_rps=() r_p99=() r_non2xx=() r_sockerr=() r_peak=() r_cpu=() r_bcpu=()
clk_tck=$(getconf CLK_TCK 2>/dev/null || echo 100)

# bench TARGET CONNECTIONS PID URL — warm-up, then the measured run.
bench() {
    local target=$1 conns=$2 pid=$3 url=$4 out rps p99 non2xx sockerr warm_peak requests cpu0 bcpu0 cpu bcpu
    out="$tmp_dir/wrk-${#r_target[@]}.txt"
    log "$target, $conns connections: ${WARMUP}s warm-up + ${DURATION}s"
    run_wrk "$out.warmup" "$WARMUP" "$conns" "$pid" "$url"
    warm_peak=$PEAK_KB
    cpu0=$(cpu_ticks "$pid")
    bcpu0=$(backends_cpu_ticks)
    run_wrk "$out" "$DURATION" "$conns" "$pid" "$url"
    cpu=$(( $(cpu_ticks "$pid") - cpu0 ))
    bcpu=$(( $(backends_cpu_ticks) - bcpu0 ))
    ((warm_peak > PEAK_KB)) && PEAK_KB=$warm_peak
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    p99=$(awk '$1 == "99%" { print $2 }' "$out")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")
    sockerr=$(awk '/Socket errors:/ { gsub(/,/, ""); print $4 + $6 + $8 + $10 }' "$out")
    requests=$(awk '/ requests in / { print $1 }' "$out")
    if [[ -z "$rps" || -z "$p99" || -z "$requests" ]]; then
        cat "$out" >&2
        die "could not parse wrk output for $target at $conns connections"
    fi
    # CPU per request (microseconds): the balancer's, and the 3 backends' together.
    cpu=$(awk -v t="$cpu" -v hz="$clk_tck" -v n="$requests" 'BEGIN { printf "%.1f", (n > 0 ? t * 1e6 / hz / n : 0) }')
    bcpu=$(awk -v t="$bcpu" -v hz="$clk_tck" -v n="$requests" 'BEGIN { printf "%.1f", (n > 0 ? t * 1e6 / hz / n : 0) }')
    printf '    %s req/s, p99 %s, non-2xx %s, socket errors %s; CPU per request: balancer %s us, backends %s us\n' \
        "$rps" "$p99" "${non2xx:-0}" "${sockerr:-0}" "$cpu" "$bcpu"
    r_target+=("$target")
    r_conns+=("$conns")
    r_rps+=("$rps")
    r_p99+=("$(to_ms "$p99")")
    r_non2xx+=("${non2xx:-0}")
    r_sockerr+=("${sockerr:-0}")
    r_peak+=("$PEAK_KB")
    r_cpu+=("$cpu")
    r_bcpu+=("$bcpu")
}

log "checking packages and Swift"
packages=("${build_packages[@]}" wrk haproxy curl)
command -v python3 >/dev/null 2>&1 || packages+=(python3)
ensure_packages "${packages[@]}"
ensure_swift
ensure_haproxy

build_release

tmp_dir=$(mktemp -d "${TMPDIR:-/tmp}/session-cluster-bench-balancer.XXXXXX")
start_pid_watchdog
cpus=$(nproc)
load=$(cut -d' ' -f1-3 /proc/loadavg)

# --- the backends ------------------------------------------------------------------

backend_args=()
backend_addresses=()
for ((i = 0; i < BACKENDS; i++)); do
    backend_port[i]=$(new_port)
    "$binary" node --port "${backend_port[$i]}" --node-id "n$((i + 1))" --strategy local --log-level warning \
        </dev/null >"$tmp_dir/node$((i + 1)).log" 2>&1 &
    backend_pid[i]=$!
    save_pids
    backend_args+=(--backend "n$((i + 1))=127.0.0.1:${backend_port[$i]}")
    backend_addresses+=("127.0.0.1:${backend_port[$i]}")
done
log "started $BACKENDS backends (session-cluster node --strategy local) on ports ${backend_port[*]}"
for ((i = 0; i < BACKENDS; i++)); do
    if ! wait_http "backend n$((i + 1))" "http://127.0.0.1:${backend_port[$i]}/healthz" "${backend_pid[$i]}"; then
        tail -n 20 "$tmp_dir/node$((i + 1)).log" >&2 || true
        die "backend n$((i + 1)) did not start"
    fi
done

# --- HAProxy -------------------------------------------------------------------------

haproxy_port=$(new_port)
haproxy_version=$(haproxy -v 2>/dev/null | awk 'NR == 1 { print $3 }')
start_haproxy haproxy "$haproxy_port" "${backend_addresses[@]}"

# --- our balancer ----------------------------------------------------------------------

proxy_port=$(new_port)
log "starting session-cluster proxy on 127.0.0.1:$proxy_port (--event-loops $cpus)"
"$binary" proxy --listen "127.0.0.1:$proxy_port" "${backend_args[@]}" --event-loops "$cpus" \
    --max-connections $((IDLE_CLIENTS + 5000)) --log-level warning </dev/null >"$tmp_dir/proxy.log" 2>&1 &
proxy_pid=$!
save_pids
if ! wait_http "session-cluster proxy" "http://127.0.0.1:$proxy_port/healthz" "$proxy_pid"; then
    tail -n 20 "$tmp_dir/proxy.log" >&2 || true
    die "session-cluster proxy did not start"
fi

# Both spread requests over all three backends.
check_spread haproxy "$haproxy_port" "$BACKENDS"
check_spread ours "$proxy_port" "$BACKENDS"

sleep 1
proxy_start_kb=$(rss_kb "$proxy_pid")
haproxy_start_kb=$(rss_kb "$haproxy_pid")

# --- 1. wrk, interleaved rounds ----------------------------------------------------------

# On a small shared machine one run can be 30% off; the median of interleaved
# rounds is steadier. The order of the two alternates between rounds.
for ((round = 1; round <= ROUNDS; round++)); do
    log "round $round of $ROUNDS"
    for conns in "${CONCURRENCIES[@]}"; do
        if ((round % 2)); then order=(haproxy ours); else order=(ours haproxy); fi
        for target in "${order[@]}"; do
            if [[ "$target" == haproxy ]]; then
                bench haproxy "$conns" "$haproxy_pid" "http://127.0.0.1:$haproxy_port/healthz"
            else
                bench ours "$conns" "$proxy_pid" "http://127.0.0.1:$proxy_port/healthz"
            fi
        done
    done
done
kill -0 "$proxy_pid" 2>/dev/null || { tail -n 20 "$tmp_dir/proxy.log" >&2; die "our balancer died during the benchmark"; }
kill -0 "$haproxy_pid" 2>/dev/null || { tail -n 20 "$tmp_dir/haproxy.log" >&2; die "HAProxy died during the benchmark"; }

# --- 2. idle clients -----------------------------------------------------------------------

cat >"$tmp_dir/idle_clients.py" <<'PYTHON'
# idle_clients.py HOST PORT COUNT RELEASE_FILE MAX_HOLD_SECONDS
# Opens COUNT connections; on each, one GET /healthz (keep-alive) and its
# whole response; then holds them all, idle, until RELEASE_FILE exists (or
# MAX_HOLD_SECONDS pass), counts how many are still open, and closes them.
import os, resource, socket, sys, time

host, port, count, release, max_hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
need = count + 100
if soft != resource.RLIM_INFINITY and soft < need:
    new = need if hard == resource.RLIM_INFINITY else min(hard, need)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    soft = new
if soft != resource.RLIM_INFINITY and soft < need:
    print(f"error: RLIMIT_NOFILE {soft} (hard {hard}) is below {need}", flush=True)
    sys.exit(2)

request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

def one_request(s):
    s.sendall(request)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise EOFError("closed before the response head")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding":
            raise ValueError("chunked response: not expected from /healthz")
    if length is None:
        raise ValueError("no Content-Length")
    while len(rest) < length:
        chunk = s.recv(4096)
        if not chunk:
            raise EOFError("closed in the body")
        rest += chunk
    return status

socks, failed, first_error = [], 0, ""
start = time.monotonic()
for _ in range(count):
    try:
        s = socket.create_connection((host, port), timeout=5)
    except OSError as e:
        failed += 1
        first_error = first_error or f"connect: {e}"
        if failed > 100:
            break
        continue
    socks.append(s)
    try:
        status = one_request(s)
        if status != 200:
            failed += 1
            first_error = first_error or f"status {status}"
    except (OSError, ValueError, EOFError) as e:
        failed += 1
        first_error = first_error or f"request: {e!r}"
        if failed > 100:
            break
elapsed = int((time.monotonic() - start) * 1000)
print(f"ready {len(socks)} failed {failed} ms {elapsed} first_error {first_error or '-'}", flush=True)

deadline = time.monotonic() + max_hold
while not os.path.exists(release) and time.monotonic() < deadline:
    time.sleep(0.1)

still_open = 0
for s in socks:
    s.setblocking(False)
    try:
        s.recv(1, socket.MSG_PEEK)  # bytes: unexpected; b"": closed by the peer
    except BlockingIOError:
        still_open += 1
    except OSError:
        pass
print(f"still_open {still_open}", flush=True)
for s in socks:
    s.close()
PYTHON

proxy_before_idle_kb=$(rss_kb "$proxy_pid")
log "idle clients: opening $IDLE_CLIENTS keep-alive connections to our balancer, one GET /healthz each"
rm -f "$tmp_dir/release"
timeout -k 5 180 python3 "$tmp_dir/idle_clients.py" 127.0.0.1 "$proxy_port" "$IDLE_CLIENTS" "$tmp_dir/release" 120 \
    </dev/null >"$tmp_dir/idle.out" 2>&1 &
idle_pid=$!
save_pids
for ((i = 0; i < 1200; i++)); do     # up to 120 s
    grep -q '^ready ' "$tmp_dir/idle.out" 2>/dev/null && break
    kill -0 "$idle_pid" 2>/dev/null || break
    sleep 0.1
done
ready_line=$(grep -m1 '^ready ' "$tmp_dir/idle.out" || true)
[[ -n "$ready_line" ]] || { cat "$tmp_dir/idle.out" >&2; die "the idle clients did not connect within 120 s"; }
idle_open=$(awk '{ print $2 }' <<<"$ready_line")
idle_failed=$(awk '{ print $4 }' <<<"$ready_line")
idle_ms=$(awk '{ print $6 }' <<<"$ready_line")
idle_error=${ready_line#* first_error }
echo "    $idle_open connected in $idle_ms ms, $idle_failed failed (first error: $idle_error)"
sleep 1
proxy_idle_kb=$(rss_kb "$proxy_pid")
proxy_conns=$(find "/proc/$proxy_pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)

# Fresh clients while they are held: 20 curls, each on a new connection.
curl_ok=0 curl_max_ms=0
for ((i = 0; i < 20; i++)); do
    t=$(curl -fsS -o /dev/null -w '%{time_total}' --max-time 2 "http://127.0.0.1:$proxy_port/healthz" 2>/dev/null) || t=""
    if [[ -n "$t" ]]; then
        curl_ok=$((curl_ok + 1))
        ms=$(awk -v t="$t" 'BEGIN { printf "%d", t * 1000 + 0.5 }')
        ((ms > curl_max_ms)) && curl_max_ms=$ms
    fi
done
echo "    fresh curls through the balancer meanwhile: $curl_ok of 20 answered 200, slowest $curl_max_ms ms"

touch "$tmp_dir/release"
idle_status=0
wait "$idle_pid" || idle_status=$?
idle_pid=""
save_pids
still_open=$(awk '/^still_open / { print $2 }' "$tmp_dir/idle.out")
((idle_status == 0)) || { cat "$tmp_dir/idle.out" >&2; die "the idle-client script failed (exit code $idle_status)"; }
echo "    idle connections still open when released: ${still_open:-?} of $idle_open"
sleep 1
proxy_after_idle_kb=$(rss_kb "$proxy_pid")
kill -0 "$proxy_pid" 2>/dev/null || { tail -n 20 "$tmp_dir/proxy.log" >&2; die "our balancer died during the idle-client test"; }

# --- summary ---------------------------------------------------------------------------------

verdict() { awk -v v="$1" -v t="$2" -v op="$3" 'BEGIN { ok = (op == ">=" ? v >= t : v <= t); print (ok ? "met" : "NOT met") }'; }

# stats TARGET CONNS — sets S_RPS, S_P99, S_RANGE, S_ERR (non-2xx + socket errors), S_PEAK (kB),
# S_CPU and S_BCPU (median CPU us per request: the balancer, the backends).
stats() {
    local i rps=() p99=() cpu=() bcpu=()
    S_ERR=0 S_PEAK=0
    for i in "${!r_target[@]}"; do
        [[ "${r_target[$i]}" == "$1" && "${r_conns[$i]}" == "$2" ]] || continue
        rps+=("${r_rps[$i]}")
        p99+=("${r_p99[$i]}")
        cpu+=("${r_cpu[$i]}")
        bcpu+=("${r_bcpu[$i]}")
        S_ERR=$((S_ERR + r_non2xx[i] + r_sockerr[i]))
        ((r_peak[i] > S_PEAK)) && S_PEAK=${r_peak[$i]}
    done
    S_RPS=$(median "${rps[@]}")
    S_P99=$(median "${p99[@]}")
    S_CPU=$(median "${cpu[@]}")
    S_BCPU=$(median "${bcpu[@]}")
    S_RANGE=$(printf '%s\n' "${rps[@]}" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.0f-%.0f", lo, hi }')
}

rss_idle_mb=$(kb_to_mb "$proxy_idle_kb")
declare -a verdicts=()
echo
echo "===================== bench-balancer summary ====================="
echo "nproc: $cpus    load average before the run: $load    everything on 127.0.0.1"
echo "backends: $BACKENDS x session-cluster node --strategy local, GET /healthz"
echo "HAProxy $haproxy_version: nbthread $cpus, balance roundrobin, http-keep-alive, http-reuse always, option forwardfor, no logging"
echo "ours:    session-cluster proxy --event-loops $cpus (release build)"
echo "wrk:     $ROUNDS interleaved rounds of: wrk -t$THREADS -cN -d${DURATION}s --latency URL (${WARMUP}s warm-up before each); medians"
echo
printf '%6s  %-8s %11s %13s %9s %8s %12s %8s %8s   %s\n' conns target "req/s" "range" "p99 ms" errors "peak RSS MB" "cpu us" "be us" \
    "ours / HAProxy"
for conns in "${CONCURRENCIES[@]}"; do
    stats haproxy "$conns"
    h_rps=$S_RPS h_p99=$S_P99
    printf '%6s  %-8s %11s %13s %9s %8s %12s %8s %8s\n' "$conns" HAProxy "$S_RPS" "$S_RANGE" "$S_P99" "$S_ERR" "$(kb_to_mb "$S_PEAK")" \
        "$S_CPU" "$S_BCPU"
    stats ours "$conns"
    ratio=$(awk -v a="$S_RPS" -v b="$h_rps" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print 0 }')
    p99_ratio=$(awk -v a="$S_P99" -v b="$h_p99" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
    v_rps=$(verdict "$ratio" "$RATIO_TARGET" ">=")
    v_p99=$(verdict "$S_P99" "$h_p99" "<=")
    verdicts+=("$v_rps" "$v_p99")
    printf '%6s  %-8s %11s %13s %9s %8s %12s %8s %8s   throughput %sx (target >= %sx: %s), p99 %sx (target <= HAProxy: %s)\n' \
        "$conns" ours "$S_RPS" "$S_RANGE" "$S_P99" "$S_ERR" "$(kb_to_mb "$S_PEAK")" "$S_CPU" "$S_BCPU" "$ratio" "$RATIO_TARGET" "$v_rps" "$p99_ratio" "$v_p99"
done
echo "(errors: non-2xx responses plus wrk socket errors, all rounds; peak RSS: sampled every 0.5 s during the runs;"
echo " cpu us / be us: median CPU time, user + system, per request of the balancer / of the 3 backends together)"
echo
v_rss=$(verdict "$rss_idle_mb" "$RSS_TARGET_MB" "<=")
verdicts+=("$v_rss")
printf 'our RSS: %s MB at start, %s MB before the idle clients (after the wrk runs), %s MB with %s idle clients (%s descriptors open), %s MB after they left\n' \
    "$(kb_to_mb "$proxy_start_kb")" "$(kb_to_mb "$proxy_before_idle_kb")" "$rss_idle_mb" "$idle_open" "$proxy_conns" \
    "$(kb_to_mb "$proxy_after_idle_kb")"
printf '  target <= %s MB with %s idle clients: %s    (HAProxy RSS at start: %s MB)\n' "$RSS_TARGET_MB" "$idle_open" "$v_rss" \
    "$(kb_to_mb "$haproxy_start_kb")"
printf '  idle clients: %s connected in %s ms, %s failed; %s still open when released; fresh curls meanwhile: %s/20 answered, slowest %s ms\n' \
    "$idle_open" "$idle_ms" "$idle_failed" "${still_open:-?}" "$curl_ok" "$curl_max_ms"
met=0
for v in "${verdicts[@]}"; do [[ "$v" == met ]] && met=$((met + 1)); done
echo
echo "targets met: $met of ${#verdicts[@]}"
echo "=================================================================="
if [[ -s "$tmp_dir/proxy.log" ]]; then
    echo
    echo "proxy log (warnings and above, last 10 lines):"
    tail -n 10 "$tmp_dir/proxy.log"
fi

((idle_open == IDLE_CLIENTS && idle_failed == 0)) || die "not every idle client connected and got its answer"
((curl_ok == 20)) || die "fresh clients did not all get answers while the idle clients were held"
[[ "${still_open:-0}" == "$idle_open" ]] || die "our balancer closed idle connections while they were held"
