# shellcheck shell=bash
# A private 3-server Apache ZooKeeper ensemble on loopback, for integration
# tests.
#
# Sourced after lib.sh (it uses log, die, free_port, stop_pid, tmp_dir and
# ensure_packages):
#     # shellcheck source-path=SCRIPTDIR source=zookeeper.sh
#     source "$script_dir/zookeeper.sh"
#     ensure_zookeeper_packages
#     start_zookeeper_ensemble
# Unless lib.sh's cleanup calls it, the script stops the ensemble from its
# stop_children: stop_zookeeper_ensemble (idempotent). A script with a
# watchdog may list "${zookeeper_pids[@]}" in its save_pids (called when
# defined). Should the script die without stopping the ensemble (SIGKILL, a
# forgotten stop), a watchdog of the ensemble's own stops the JVMs within
# about 3 s (they would outlive the script and its removed $tmp_dir).
#
# Debian 12's zookeeper package (3.8.0): the servers are neither the system
# service nor configured from /etc/zookeeper. Each is a JVM started directly
# (java ... org.apache.zookeeper.server.quorum.QuorumPeerMain zoo.cfg), a
# child of the script, with its own zoo.cfg, myid, data and log in
# $tmp_dir/zookeeper/N (N = 1, 2, 3). The classpath is Debian's
# (/usr/share/java/zookeeper.jar, whose manifest lists the jars it needs) plus
# an SLF4J binding to log4j 1.2, which Debian's own classpath lacks (SLF4J
# then logs nothing); log4j writes INFO and above to the console, which is
# $tmp_dir/zookeeper/N/zookeeper.log.
#
# State:
#   zookeeper_pids     the servers' JVM PIDs (index i is server.(i+1))
#   zookeeper_ports    their client ports, in the same order
#   zookeeper_connect  127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3 (the host string
#                      of zookeeper_init, zkCli.sh -server)
#   zookeeper_dir      $tmp_dir/zookeeper
#   zookeeper_watchdog_pid  the background subshell that stops the JVMs once
#                      this shell is gone (stop_zookeeper_ensemble stops it)
#
# Timing (zoo.cfg): tickTime=200 ms; a follower that hears nothing from the
# leader for syncLimit=10 ticks (2 s) drops out; followers get initLimit=50
# ticks (10 s) to sync with a new leader. A killed leader's followers see its
# sockets close at once, so a new leader is serving within about a second.
# Sessions may ask for 400 ms (2 ticks) to 60 s (maxSessionTimeout; the
# default would be 20 ticks, 4 s). forceSync=no: no fsync of the transaction
# log (the data is thrown away anyway).

# Kept when sourced again (e.g. by lib.sh and by the script).
zookeeper_pids=("${zookeeper_pids[@]}")
zookeeper_ports=("${zookeeper_ports[@]}")
zookeeper_connect=${zookeeper_connect:-}
zookeeper_dir=${zookeeper_dir:-}
zookeeper_watchdog_pid=${zookeeper_watchdog_pid:-}

# The jars: Debian's zookeeper.jar (its manifest's Class-Path brings jute,
# netty, jetty, jackson, commons-*, slf4j-api...) and the SLF4J binding to log4j 1.2.
zookeeper_classpath=/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar

# Modest JVMs: 128 MB of heap, the serial collector, C1 only (a faster start).
zookeeper_jvm_flags=(-Xms32m -Xmx128m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:-UsePerfData
    -Djava.net.preferIPv4Stack=true -Dzookeeper.jmx.log4j.disable=true)

# ensure_zookeeper_packages — the ZooKeeper server (and a JRE) and the C client's headers and library.
ensure_zookeeper_packages() {
    ensure_packages zookeeper libzookeeper-mt-dev
}

# zookeeper_srvr PORT — the answer of the server on 127.0.0.1:PORT to the
# four-letter word srvr (empty, and false, when it does not answer within 2 s).
zookeeper_srvr() {
    # shellcheck disable=SC2016  # expanded by the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && printf srvr >&3 && cat <&3' _ "$1" 2>/dev/null
}

# zookeeper_mode PORT — leader, follower, or nothing when the server on PORT
# does not answer or is not serving (e.g. during an election).
zookeeper_mode() {
    zookeeper_srvr "$1" | sed -n 's/^Mode: //p' || true
}

# zookeeper_leader_index — print the index (0-2) of the server whose srvr
# says Mode: leader; false (nothing printed) when none does.
zookeeper_leader_index() {
    local i
    for i in "${!zookeeper_ports[@]}"; do
        if [[ -n "${zookeeper_pids[i]:-}" ]] && ! kill -0 "${zookeeper_pids[i]}" 2>/dev/null; then
            continue
        fi
        if [[ "$(zookeeper_mode "${zookeeper_ports[i]}")" == leader ]]; then
            echo "$i"
            return 0
        fi
    done
    return 1
}

# zookeeper_logs — the tails of the servers' logs, on stderr.
zookeeper_logs() {
    local n
    for n in 1 2 3; do
        [[ -f "$zookeeper_dir/$n/zookeeper.log" ]] || continue
        printf -- '--- %s/%s/zookeeper.log (last 20 lines)\n' "$zookeeper_dir" "$n" >&2
        tail -n 20 "$zookeeper_dir/$n/zookeeper.log" >&2 || true
    done
}

# zookeeper_start_watchdog — a background subshell that, once this shell ($$)
# is gone, stops the current zookeeper_pids (TERM, KILL 2 s later). Sets
# zookeeper_watchdog_pid.
zookeeper_start_watchdog() {
    local -a pids=("${zookeeper_pids[@]}")
    (
        trap - INT TERM
        while kill -0 "$$" 2>/dev/null; do sleep 1; done
        kill -TERM "${pids[@]}" 2>/dev/null || true
        sleep 2
        kill -KILL "${pids[@]}" 2>/dev/null || true
    ) </dev/null >/dev/null 2>&1 &
    zookeeper_watchdog_pid=$!
}

# start_zookeeper_ensemble — 3 servers on 127.0.0.1, each with its own client,
# quorum and election port (9 distinct free ports); waits up to 60 s until all
# three answer srvr as leader or follower, with exactly one leader. Should a
# server exit first, or log a BindException (a port taken since free_port
# chose it), starts over on new ports, 3 attempts in all (within the 60 s).
# Fails with the tails of the logs. Sets zookeeper_pids, zookeeper_ports,
# zookeeper_connect and zookeeper_dir.
start_zookeeper_ensemble() {
    local attempt i n p dir mode leaders leader ready="" failed="" deadline
    local -a jars=() used=() quorum=() election=() modes=()
    [[ -n "$tmp_dir" ]] || die "start_zookeeper_ensemble needs tmp_dir"
    command -v java >/dev/null 2>&1 || die "java not found (ensure_zookeeper_packages installs a JRE)"
    IFS=: read -ra jars <<<"$zookeeper_classpath"
    for p in "${jars[@]}"; do
        [[ -f "$p" ]] || die "$p not found (ensure_zookeeper_packages installs it)"
    done
    ((${#zookeeper_pids[@]} == 0)) || die "a ZooKeeper ensemble is already running (pids ${zookeeper_pids[*]})"
    zookeeper_dir="$tmp_dir/zookeeper"
    deadline=$((SECONDS + 60))
    for attempt in 1 2 3; do
        rm -rf "$zookeeper_dir"
        mkdir -p "$zookeeper_dir"
        cat >"$zookeeper_dir/log4j.properties" <<'LOG4J'
log4j.rootLogger=INFO, CONSOLE
log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender
log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout
log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} %-5p [%t:%C{1}@%L] - %m%n
LOG4J
        used=()
        for ((i = 0; i < 9; i++)); do
            p=""
            while [[ -z "$p" || " ${used[*]} " == *" $p "* ]]; do
                p=$(free_port) || die "no free loopback port found for ZooKeeper"
            done
            used+=("$p")
        done
        zookeeper_ports=("${used[@]:0:3}")
        quorum=("${used[@]:3:3}")
        election=("${used[@]:6:3}")
        zookeeper_connect=$(printf '127.0.0.1:%s,' "${zookeeper_ports[@]}")
        zookeeper_connect=${zookeeper_connect%,}
        log "starting a ZooKeeper ensemble (3 servers) on $zookeeper_connect (attempt $attempt)"
        for n in 1 2 3; do
            dir="$zookeeper_dir/$n"
            mkdir -p "$dir/data"
            echo "$n" >"$dir/data/myid"
            {
                printf '%s\n' tickTime=200 initLimit=50 syncLimit=10 \
                    "dataDir=$dir/data" "clientPort=${zookeeper_ports[n - 1]}" clientPortAddress=127.0.0.1 \
                    maxClientCnxns=0 maxSessionTimeout=60000 \
                    4lw.commands.whitelist=srvr,stat,mntr,ruok admin.enableServer=false \
                    forceSync=no preAllocSize=4096
                for i in 1 2 3; do
                    printf 'server.%s=127.0.0.1:%s:%s\n' "$i" "${quorum[i - 1]}" "${election[i - 1]}"
                done
            } >"$dir/zoo.cfg"
            # A subshell that execs java: $! is the JVM's own PID; its working directory (hs_err files) is $dir.
            (
                cd "$dir" || exit 1
                exec java "${zookeeper_jvm_flags[@]}" "-XX:ErrorFile=$dir/hs_err_%p.log" \
                    "-Dlog4j.configuration=file:$zookeeper_dir/log4j.properties" \
                    -cp "$zookeeper_classpath" org.apache.zookeeper.server.quorum.QuorumPeerMain "$dir/zoo.cfg"
            ) </dev/null >"$dir/zookeeper.log" 2>&1 &
            zookeeper_pids+=($!)
        done
        zookeeper_start_watchdog
        if declare -F save_pids >/dev/null; then save_pids; fi
        failed=""
        while ((SECONDS < deadline)); do
            for i in 0 1 2; do
                if ! kill -0 "${zookeeper_pids[i]}" 2>/dev/null; then
                    failed="server $((i + 1)) (pid ${zookeeper_pids[i]}) exited"
                    break 2
                fi
                # A port taken since free_port chose it: the server exits, but only after retrying its
                # election port for seconds, or (a leader's quorum port) goes on electing itself.
                if grep -q 'java.net.BindException' "$zookeeper_dir/$((i + 1))/zookeeper.log" 2>/dev/null; then
                    failed="server $((i + 1)) (pid ${zookeeper_pids[i]}) could not bind one of its ports"
                    break 2
                fi
            done
            modes=()
            leaders=0
            for i in 0 1 2; do
                mode=$(zookeeper_mode "${zookeeper_ports[i]}")
                modes+=("${mode:-none}")
                if [[ "$mode" == leader ]]; then leaders=$((leaders + 1)); fi
            done
            if [[ " ${modes[*]} " != *" none "* ]] && ((leaders == 1)); then
                # Only a leader binds its quorum port: one that answers at a follower's is another process's.
                for i in 0 1 2; do
                    if [[ "${modes[i]}" != leader ]] && (exec 3<>"/dev/tcp/127.0.0.1/${quorum[i]}") 2>/dev/null; then
                        failed="server $((i + 1)) (pid ${zookeeper_pids[i]}) has its quorum port ${quorum[i]} taken"
                        break 2
                    fi
                done
                ready=1
                break 2
            fi
            sleep 0.2
        done
        zookeeper_logs
        stop_zookeeper_ensemble
        [[ -n "$failed" ]] ||
            die "the ZooKeeper ensemble did not elect a leader within 60 s (modes: ${modes[*]:-none}; the logs' tails are above)"
        printf 'warning: ZooKeeper %s while the ensemble started\n' "$failed" >&2
        ((SECONDS < deadline)) || break
    done
    [[ -n "$ready" ]] || die "the ZooKeeper ensemble could not be started (see the logs above)"
    leader=$(zookeeper_leader_index) || leader=""
    log "ZooKeeper ensemble ready (pids ${zookeeper_pids[*]}, leader: server ${leader:+$((leader + 1))})"
}

# stop_zookeeper_ensemble — SIGTERM to every server, then stop_pid each (SIGKILL
# after 10 s); empties zookeeper_pids, stops the watchdog. Idempotent.
stop_zookeeper_ensemble() {
    local i
    if [[ -n "$zookeeper_watchdog_pid" ]]; then
        kill -TERM "$zookeeper_watchdog_pid" 2>/dev/null || true
        wait "$zookeeper_watchdog_pid" 2>/dev/null || true
        zookeeper_watchdog_pid=""
    fi
    ((${#zookeeper_pids[@]} > 0)) || return 0
    for i in "${!zookeeper_pids[@]}"; do
        kill -TERM "${zookeeper_pids[i]}" 2>/dev/null || true
    done
    for i in "${!zookeeper_pids[@]}"; do
        stop_pid "ZooKeeper server $((i + 1))" "${zookeeper_pids[i]}"
    done
    zookeeper_pids=()
    if declare -F save_pids >/dev/null; then save_pids; fi
}
