# shellcheck shell=bash
# Helpers shared by scripts/test.sh, bench-node.sh and bench-redis.sh.
#
# Sourced right after `set -euo pipefail`:
#     script_dir=$(cd -P "$(dirname "${BASH_SOURCE[0]}")" && pwd)
#     # shellcheck source-path=SCRIPTDIR source=lib.sh
#     source "$script_dir/lib.sh"
# Sourcing it changes to the repository root, sources ensure-packages.sh
# (ensure_packages, ensure_swift) and sets SCRATCH_PATH (SwiftPM's build
# directory, default .build).
#
# State that `cleanup` (the EXIT trap, see install_traps) undoes, in order:
#   stop_children  a function the script may define, to stop its own children
#   watchdog_pid   the process start_watchdog started: stopped
#   redis_pid      the redis-server start_redis started: stopped by its PID
#   redis_cluster_pids  the redis-servers start_redis_cluster started: stopped by PID
#   postgres_pid   the PostgreSQL start_postgres (postgres.sh) started: stopped by its PID
#   zookeeper_pids the ZooKeeper ensemble start_zookeeper_ensemble (zookeeper.sh)
#                  started: stopped by PID (it has a watchdog of its own)
#   tmp_dir        the script's temp dir: removed
# Also: child_pid, the command `run` is waiting for (the script's
# stop_children stops it); redis_port, the port of that redis-server;
# redis_cluster_seeds, the cluster's nodes as 127.0.0.1:port,...
# start_watchdog copies these when it starts: call it after start_redis,
# start_redis_cluster and start_postgres.

lib_dir=$(cd -P "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$lib_dir/.." || exit

# shellcheck source-path=SCRIPTDIR source=ensure-packages.sh
source "$lib_dir/ensure-packages.sh"
# shellcheck source-path=SCRIPTDIR source=postgres.sh
source "$lib_dir/postgres.sh"
# shellcheck source-path=SCRIPTDIR source=zookeeper.sh
source "$lib_dir/zookeeper.sh"

SCRATCH_PATH=${SCRATCH_PATH:-.build}

tmp_dir=""
child_pid=""
watchdog_pid=""
redis_pid=""
redis_port=""
redis_cluster_pids=()
redis_cluster_seeds=""

log() { printf '==> %s\n' "$*"; }

# positive NAME VALUE — exit 2 with a clear message unless VALUE is a positive integer.
positive() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || { echo "error: $1 must be a positive integer, got '$2'" >&2; exit 2; }; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# A free TCP port on 127.0.0.1 (python3 if present, else a bash probe).
free_port() {
    local port i
    if command -v python3 >/dev/null 2>&1 && python3 -c '
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()' 2>/dev/null; then
        return 0
    fi
    for ((i = 0; i < 200; i++)); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    return 1
}

# wait_gone PID — wait up to 10 s for PID to exit; false if it still runs.
wait_gone() {
    local pid=$1 i
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    ! kill -0 "$pid" 2>/dev/null
}

# kill_wait PID — SIGTERM, then reap it (no waiting for it to stop first).
kill_wait() {
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# stop_pid NAME PID [SIGNAL] — SIGNAL (default TERM), wait up to 10 s, then SIGKILL.
stop_pid() {
    local name=$1 pid=$2 sig=${3:-TERM}
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    log "stopping $name (pid $pid)"
    kill -"$sig" "$pid" 2>/dev/null || true
    if ! wait_gone "$pid"; then
        printf 'warning: %s (pid %s) did not stop on SIG%s; sending SIGKILL\n' "$name" "$pid" "$sig" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# cleanup — the EXIT trap: the script's stop_children (if it defines one),
# then the watchdog, redis-server and the temp dir.
cleanup() {
    if declare -F stop_children >/dev/null; then
        stop_children
    fi
    if [[ -n "$watchdog_pid" ]]; then
        kill_wait "$watchdog_pid"
        watchdog_pid=""
    fi
    if [[ -n "$redis_pid" ]]; then
        stop_pid redis-server "$redis_pid"
        redis_pid=""
    fi
    local pid
    for pid in "${redis_cluster_pids[@]}"; do
        stop_pid "redis-server (cluster)" "$pid"
    done
    redis_cluster_pids=()
    stop_postgres
    stop_zookeeper_ensemble
    if [[ -n "$tmp_dir" ]]; then
        rm -rf "$tmp_dir"
        tmp_dir=""
    fi
}

# install_traps — cleanup on exit; INT and TERM exit with 130 and 143.
install_traps() {
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# A background command of a script ignores SIGINT (bash sets it so without
# job control), and swift build/test then ignore it too; GNU env (coreutils
# 8.31+) starts them with the default disposition, so SIGINT stops them.
sigint_default=()
if env --default-signal=INT true 2>/dev/null; then sigint_default=(env --default-signal=INT); fi

# run [--out OUTFILE | --tee LOGFILE] CMD... — run a long command as a background
# child and wait for it, so that INT/TERM reach the traps at once instead of after
# the command ends; meanwhile its PID is in child_pid and $tmp_dir/child.pid.
# With --out, its stdout goes to OUTFILE and its stderr to OUTFILE.err; with
# --tee, both go to the terminal and to LOGFILE.
# Returns the command's exit code.
run() {
    local out="" tee_to="" tee_pid="" status=0
    if [[ "$1" == --out ]]; then
        out=$2
        shift 2
    elif [[ "$1" == --tee ]]; then
        tee_to=$2
        shift 2
    fi
    if [[ -n "$out" ]]; then
        "${sigint_default[@]}" "$@" </dev/null >"$out" 2>"$out.err" &
    elif [[ -n "$tee_to" ]]; then
        # Through a FIFO, so that tee can be waited for: its copy is whole when run returns.
        rm -f "$tmp_dir/run.fifo"
        mkfifo "$tmp_dir/run.fifo"
        tee "$tee_to" <"$tmp_dir/run.fifo" &
        tee_pid=$!
        "${sigint_default[@]}" "$@" </dev/null >"$tmp_dir/run.fifo" 2>&1 &
    else
        "${sigint_default[@]}" "$@" </dev/null &
    fi
    child_pid=$!
    echo "$child_pid" >"$tmp_dir/child.pid"
    wait "$child_pid" || status=$?
    if [[ -n "$tee_pid" ]]; then
        wait "$tee_pid" || true
        rm -f "$tmp_dir/run.fifo"
    fi
    rm -f "$tmp_dir/child.pid"
    child_pid=""
    return "$status"
}

# build_release — build session-cluster in release mode; sets binary.
build_release() {
    log "building session-cluster (release, scratch path $SCRATCH_PATH)"
    swift build -c release --product session-cluster --scratch-path "$SCRATCH_PATH"
    binary="$SCRATCH_PATH/release/session-cluster"
    [[ -x "$binary" ]] || die "$binary not found after the build"
}

# start_redis — a private redis-server on a free loopback port, no
# persistence, its files in $tmp_dir; waits until it answers PING, and
# retries on another port if the chosen one got taken. Sets redis_port and
# redis_pid.
start_redis() {
    local attempt i started=""
    for attempt in 1 2 3 4 5; do
        redis_port=$(free_port) || die "no free loopback port found for redis-server"
        log "starting redis-server on 127.0.0.1:$redis_port (attempt $attempt)"
        redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
            --daemonize no --dir "$tmp_dir" --logfile "$tmp_dir/redis.log" \
            </dev/null >"$tmp_dir/redis.out" 2>&1 &
        redis_pid=$!
        for ((i = 0; i < 100; i++)); do     # up to 10 s
            if [[ "$(redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null || true)" == PONG ]]; then
                started=1
                break
            fi
            kill -0 "$redis_pid" 2>/dev/null || break
            sleep 0.1
        done
        [[ -n "$started" ]] && break
        if kill -0 "$redis_pid" 2>/dev/null; then
            tail -n 20 "$tmp_dir/redis.log" "$tmp_dir/redis.out" >&2 || true
            die "redis-server (pid $redis_pid) did not answer PING on port $redis_port within 10 s"
        fi
        wait "$redis_pid" 2>/dev/null || true
        redis_pid=""
        tail -n 5 "$tmp_dir/redis.log" "$tmp_dir/redis.out" >&2 || true
    done
    [[ -n "$started" ]] || die "redis-server could not be started (see its log above)"
}

# start_redis_cluster — a private Redis Cluster of 3 primaries and 3 replicas
# (one each), every node on a free loopback port with its cluster bus on another
# (--cluster-port: Redis 7.0 or later), no persistence, its nodes-PORT.conf and
# log in $tmp_dir/redis-cluster; created with redis-cli --cluster create, and
# waited for (up to 30 s) until every node reports cluster_state:ok, 16384 slots
# assigned and 6 known nodes. --cluster-node-timeout 1000: a replica takes over a
# killed primary within seconds. Sets redis_cluster_pids and redis_cluster_seeds.
start_redis_cluster() {
    local dir="$tmp_dir/redis-cluster" i j port bus info ready="" addresses=() used=()
    mkdir -p "$dir"
    for ((i = 1; i <= 6; i++)); do
        port=""
        bus=""
        while [[ -z "$port" || " ${used[*]} " == *" $port "* ]]; do
            port=$(free_port) || die "no free loopback port found for the Redis Cluster"
        done
        used+=("$port")
        while [[ -z "$bus" || " ${used[*]} " == *" $bus "* ]]; do
            bus=$(free_port) || die "no free loopback port found for the Redis Cluster"
        done
        used+=("$bus")
        redis-server --port "$port" --cluster-port "$bus" --bind 127.0.0.1 --cluster-enabled yes \
            --cluster-config-file "$dir/nodes-$port.conf" --cluster-node-timeout 1000 \
            --save '' --appendonly no --dbfilename "dump-$port.rdb" --daemonize no \
            --dir "$dir" --logfile "$dir/redis-$port.log" </dev/null >"$dir/redis-$port.out" 2>&1 &
        redis_cluster_pids+=($!)
        addresses+=("127.0.0.1:$port")
    done
    log "starting a Redis Cluster (3 primaries, 3 replicas) on ${addresses[*]}"
    for ((i = 0; i < 6; i++)); do
        port=${addresses[i]#127.0.0.1:}
        for ((j = 0; j < 100; j++)); do     # up to 10 s
            [[ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null || true)" == PONG ]] && continue 2
            kill -0 "${redis_cluster_pids[i]}" 2>/dev/null || break
            sleep 0.1
        done
        tail -n 20 "$dir/redis-$port.log" "$dir/redis-$port.out" >&2 || true
        die "redis-server (pid ${redis_cluster_pids[i]}) of the Redis Cluster did not answer PING on port $port within 10 s (logs in $dir)"
    done
    if ! redis-cli --cluster create "${addresses[@]}" --cluster-replicas 1 --cluster-yes \
        </dev/null >"$dir/create.log" 2>&1; then
        tail -n 20 "$dir/create.log" >&2 || true
        die "redis-cli --cluster create failed (see $dir/create.log)"
    fi
    for ((i = 0; i < 300; i++)); do     # up to 30 s
        ready=1
        for port in "${addresses[@]#127.0.0.1:}"; do
            info=$(redis-cli -h 127.0.0.1 -p "$port" cluster info 2>/dev/null | tr -d '\r' || true)
            if [[ "$info" != *cluster_state:ok* || "$info" != *cluster_slots_assigned:16384* ||
                "$info" != *cluster_known_nodes:6* ]]; then
                ready=""
                break
            fi
        done
        [[ -n "$ready" ]] && break
        sleep 0.1
    done
    [[ -n "$ready" ]] || die "the Redis Cluster did not reach cluster_state:ok within 30 s (logs in $dir)"
    redis_cluster_seeds=$(IFS=,; echo "${addresses[*]}")
}

# start_watchdog SIGNAL — should the script be killed with SIGKILL (no trap
# runs), still send SIGNAL (or the one in $tmp_dir/child.signal) to the
# command `run` runs, stop redis-server, the Redis Cluster and PostgreSQL, and remove the
# temp dir. Sets watchdog_pid.
start_watchdog() {
    local sig=$1
    (
        trap - INT TERM
        while kill -0 "$$" 2>/dev/null; do sleep 1; done
        if [[ -s "$tmp_dir/child.pid" ]]; then
            # $tmp_dir/child.signal, when present, names the signal the current child needs.
            [[ -s "$tmp_dir/child.signal" ]] && sig=$(<"$tmp_dir/child.signal")
            kill -"$sig" "$(<"$tmp_dir/child.pid")" 2>/dev/null || true
        fi
        for redis in ${redis_pid:+"$redis_pid"} "${redis_cluster_pids[@]}"; do
            kill -TERM "$redis" 2>/dev/null || true
        done
        [[ -n "$postgres_pid" ]] && kill -INT "$postgres_pid" 2>/dev/null
        for redis in ${redis_pid:+"$redis_pid"} "${redis_cluster_pids[@]}" ${postgres_pid:+"$postgres_pid"}; do
            wait_gone "$redis" || true
        done
        rm -rf "$tmp_dir"
    ) </dev/null >/dev/null 2>&1 &
    watchdog_pid=$!
}

# wait_http NAME URL PID — wait up to 10 s for a 200 from URL (fails early when PID exits).
wait_http() {
    local name=$1 url=$2 pid=$3 i
    for ((i = 0; i < 100; i++)); do
        if curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; then
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
    printf 'error: %s did not answer %s within 10 s\n' "$name" "$url" >&2
    return 1
}

# --- wrk measurements (bench-node.sh, bench-balancer.sh) ---

# RSS of a process in kB (0 if gone).
rss_kb() {
    local kb
    kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || true)
    echo "${kb:-0}"
}

kb_to_mb() { awk -v kb="$1" 'BEGIN { printf "%.1f", kb / 1024 }'; }

# wrk latency ("812.00us", "1.23ms", "2.01s", "1.00m") to milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/)      { sub(/us$/, "", v); printf "%.2f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.2f", v }
        else if (v ~ /m$/)  { sub(/m$/, "", v);  printf "%.2f", v * 60000 }
        else if (v ~ /h$/)  { sub(/h$/, "", v);  printf "%.2f", v * 3600000 }
        else if (v ~ /s$/)  { sub(/s$/, "", v);  printf "%.2f", v * 1000 }
        else                { printf "?" }
    }'
}

# stop_named NAME VAR — when the variable VAR (e.g. proxy_pid, node_pid[2]) holds
# a PID, stop that process (stop_pid NAME) and empty VAR.
stop_named() {
    local name=$1 var=$2
    [[ -n "${!var:-}" ]] || return 0
    stop_pid "$name" "${!var}"
    printf -v "$var" '%s' ""
}

# check_spread LABEL PORT EXPECTED — 6 GET /healthz through the balancer on PORT:
# logs which backends answered (X-Served-By) and warns when not all EXPECTED did.
check_spread() {
    local label=$1 port=$2 expected=$3 i served
    local -A seen=()
    for ((i = 0; i < 6; i++)); do
        served=$(curl -fsS -o /dev/null -D - --max-time 2 "http://127.0.0.1:$port/healthz" \
            | awk -F': *' 'tolower($1) == "x-served-by" { gsub(/\r/, "", $2); print $2 }') || served=""
        [[ -n "$served" ]] && seen[$served]=1
    done
    log "$label: 6 requests were served by ${!seen[*]}"
    ((${#seen[@]} == expected)) || printf 'warning: %s did not reach all %s backends in 6 requests\n' "$label" "$expected" >&2
}

# ensure_haproxy — haproxy on PATH (Debian installs it in /usr/sbin).
ensure_haproxy() {
    command -v haproxy >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin"
    command -v haproxy >/dev/null 2>&1 || die "haproxy is installed but not on PATH"
}

# start_pid_watchdog — for a script that keeps its children's PIDs in
# $tmp_dir/pids (created empty here): should the script be killed with SIGKILL
# (no trap runs), still stop every child by its PID (TERM, KILL 2 s later) and
# remove the temp dir. Sets watchdog_pid.
start_pid_watchdog() {
    : >"$tmp_dir/pids"
    (
        trap - INT TERM
        while kill -0 "$$" 2>/dev/null; do sleep 1; done
        while read -r pid; do
            [[ -n "$pid" ]] || continue
            kill -TERM "$pid" 2>/dev/null || true
        done <"$tmp_dir/pids" || true
        sleep 2
        while read -r pid; do
            [[ -n "$pid" ]] || continue
            kill -KILL "$pid" 2>/dev/null || true
        done <"$tmp_dir/pids" || true
        rm -rf "$tmp_dir"
    ) </dev/null >/dev/null 2>&1 &
    watchdog_pid=$!
}

# new_port — a free loopback port not handed out before in this run.
declare -a used_ports=()
new_port() {
    local p
    p=$(free_port) || die "no free loopback port"
    while [[ " ${used_ports[*]} " == *" $p "* ]]; do p=$(free_port) || die "no free loopback port"; done
    used_ports+=("$p")
    echo "$p"
}

# cpu_ticks PID — CPU time (user + system, all threads) the process used so far, in clock ticks (0 if gone).
cpu_ticks() {
    local t
    t=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $12 + $13 }' || true)
    echo "${t:-0}"
}

# sum_cpu_ticks PID... — the processes' CPU ticks together (empty arguments skipped).
sum_cpu_ticks() {
    local pid total=0
    for pid in "$@"; do
        [[ -n "$pid" ]] || continue
        total=$((total + $(cpu_ticks "$pid")))
    done
    echo "$total"
}

# median VALUE... — the middle value (the mean of the two middle ones for an even count).
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# start_haproxy NAME PORT SERVER... — HAProxy, a child of this script, on
# 127.0.0.1:PORT in front of the servers (host:port each): nbthread = cores,
# balance roundrobin, keep-alive both sides (http-keep-alive, http-reuse
# always), the forwarding fields ours adds (X-Forwarded-For,
# X-Forwarded-Proto, Forwarded, X-Request-ID), no logging — the configuration the benchmarks
# compare the balancer with. Its configuration and log are $tmp_dir/NAME.cfg and
# NAME.log. Waits for GET /healthz through it; sets haproxy_pid (and calls
# save_pids when the script defines it).
start_haproxy() {
    local name=$1 port=$2 servers="" i=0 server
    shift 2
    for server in "$@"; do
        i=$((i + 1))
        servers+="    server n$i $server"$'\n'
    done
    cat >"$tmp_dir/$name.cfg" <<HAPROXY
global
    nbthread $(nproc)
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    option forwardfor
    http-reuse always
    timeout connect 2s
    timeout client 60s
    timeout server 30s
    timeout http-request 10s
    timeout http-keep-alive 60s

frontend bench
    bind 127.0.0.1:$port
    # The other three fields our balancer adds, so that the nodes behind both parse the same requests.
    http-request set-header X-Forwarded-Proto http
    http-request set-header Forwarded "for=%[src];proto=http"
    unique-id-format %[uuid()]
    unique-id-header X-Request-ID
    default_backend nodes

backend nodes
    balance roundrobin
$servers
HAPROXY
    if ! haproxy -c -q -f "$tmp_dir/$name.cfg" >"$tmp_dir/$name-check.log" 2>&1; then
        cat "$tmp_dir/$name-check.log" >&2
        die "the generated HAProxy configuration is invalid"
    fi
    log "starting HAProxy $(haproxy -v 2>/dev/null | awk 'NR == 1 { print $3 }') on 127.0.0.1:$port (nbthread $(nproc))"
    haproxy -db -f "$tmp_dir/$name.cfg" </dev/null >"$tmp_dir/$name.log" 2>&1 &
    haproxy_pid=$!
    if declare -F save_pids >/dev/null; then save_pids; fi
    if ! wait_http haproxy "http://127.0.0.1:$port/healthz" "$haproxy_pid"; then
        tail -n 20 "$tmp_dir/$name.log" >&2 || true
        die "HAProxy did not start"
    fi
}

# proc_counts PID... — "SWITCHES TICKS" summed over every thread of the PIDs: context
# switches (voluntary + involuntary, from /proc/PID/task/TID/status) and CPU time
# (user + system clock ticks, from /proc/PID/stat). Gone PIDs count 0.
proc_counts() {
    local pid switches=0 s
    for pid in "$@"; do
        s=$(cat /proc/"$pid"/task/*/status 2>/dev/null | awk '/^(non)?voluntary_ctxt_switches:/ { n += $2 } END { print n + 0 }')
        switches=$((switches + s))
    done
    local ticks
    ticks=$(sum_cpu_ticks "$@")
    echo "$switches $ticks"
}

# run_wrk OUTFILE SECONDS CONNECTIONS SAMPLE_PID URL [wrk args...] — wrk with
# $THREADS threads in the background (killed 30 s after it should have
# ended); SAMPLE_PID's RSS (if not empty) sampled every 0.5 s meanwhile. Sets
# PEAK_KB and, while wrk runs, wrk_pid (a script may define on_wrk_pid to
# record it, e.g. for its watchdog).
PEAK_KB=0
wrk_pid=""
run_wrk() {
    local out=$1 seconds=$2 conns=$3 sample_pid=$4 url=$5 rss status=0
    shift 5
    PEAK_KB=0
    timeout -k 5 $((seconds + 30)) wrk -t"$THREADS" -c"$conns" -d"${seconds}s" --latency "$@" "$url" >"$out" 2>&1 </dev/null &
    wrk_pid=$!
    if declare -F on_wrk_pid >/dev/null; then on_wrk_pid; fi
    while kill -0 "$wrk_pid" 2>/dev/null; do
        if [[ -n "$sample_pid" ]]; then
            rss=$(rss_kb "$sample_pid")
            ((rss > PEAK_KB)) && PEAK_KB=$rss
        fi
        sleep 0.5
    done
    wait "$wrk_pid" || status=$?
    wrk_pid=""
    if declare -F on_wrk_pid >/dev/null; then on_wrk_pid; fi
    if ((status != 0)); then
        cat "$out" >&2
        die "wrk failed (exit code $status) against $url"
    fi
}
