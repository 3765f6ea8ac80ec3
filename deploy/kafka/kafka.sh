#!/usr/bin/env bash
# A real Apache Kafka broker (KRaft, one node that is both broker and controller) for a laptop and for tests.
#
#   kafka.sh fetch                              copy the broker's jars from Maven Central into the cache, once
#   kafka.sh start [--port N|auto] [--controller-port M] [--dir D] [--partitions P] [--exit-with PID]
#                                               format D (first time), start the broker, wait until it serves,
#                                               print its bootstrap address (host:port) on stdout;
#                                               --exit-with: stop it when process PID ends (e.g. a killed pytest)
#   kafka.sh stop [--dir D]                     stop the broker started in D, by its own PID
#   kafka.sh status [--dir D]                   say whether the broker in D runs, and where
#
#   kafka.sh cluster up N [--dir D] [--exit-with PID]
#                                               a KRaft cluster of N nodes (each broker + controller, N voters)
#                                               on free ports, state in D (default deploy/kafka/.cluster);
#                                               prints the bootstrap list host:port,host:port,... on stdout
#   kafka.sh cluster down [--dir D]             stop every node of the cluster in D
#   kafka.sh cluster status [--dir D]           one line per node: running or not, its address
#   kafka.sh cluster kill NODE [--dir D]        SIGKILL node NODE (1..N): a crashed broker
#   kafka.sh cluster stop NODE [--dir D]        stop node NODE cleanly (SIGTERM, controlled shutdown)
#   kafka.sh cluster start NODE [--dir D]       start node NODE again on its own ports; waits until it serves
#
# KAFKA_BOOTSTRAP=host:port set means "use my broker": every subcommand starts, stops and fetches nothing.
# Environment: MINDSTREAM_CACHE (default ~/.cache/mindstream), KAFKA_HEAP_OPTS (default -Xms128m -Xmx512m),
# KAFKA_JVM_OPTS (extra JVM flags), KAFKA_START_TIMEOUT (seconds, default 90).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POM="$HERE/pom.xml"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")"
CACHE="${MINDSTREAM_CACHE:-$HOME/.cache/mindstream}"
LIBS="$CACHE/kafka-$KAFKA_VERSION/libs"
DEFAULT_DIR="$HERE/.state"

die() { echo "kafka.sh: $*" >&2; exit 1; }
say() { echo "kafka.sh: $*" >&2; }

# --- prerequisites -------------------------------------------------------------------------------------

java_major() {
    # "17.0.15", "21", "1.8.0_392" -> 17, 21, 8
    local v
    v="$(java -version 2>&1 | sed -n 's/.*version "\([^"]*\)".*/\1/p' | head -1)"
    case "$v" in
        1.*) v="${v#1.}" ;;
    esac
    echo "${v%%[.+-]*}"
}

need_java() {
    command -v java >/dev/null 2>&1 \
        || die "Java 17+ not found (no 'java' on PATH): install a JDK 17+ (e.g. apt install openjdk-17-jre-headless) or set KAFKA_BOOTSTRAP=host:port to use your own broker"
    local major
    major="$(java_major)"
    [[ "$major" =~ ^[0-9]+$ && "$major" -ge 17 ]] \
        || die "Java 17+ not found ('java' is version ${major:-unknown}): install a JDK 17+ or set KAFKA_BOOTSTRAP=host:port to use your own broker"
}

need_maven() {
    command -v mvn >/dev/null 2>&1 \
        || die "Maven not found (no 'mvn' on PATH; it fetches the Kafka $KAFKA_VERSION jars once): install Maven 3 (e.g. apt install maven) or set KAFKA_BOOTSTRAP=host:port to use your own broker"
}

pom_digest() {
    if command -v sha256sum >/dev/null 2>&1; then sha256sum "$POM"; else shasum -a 256 "$POM"; fi | cut -c1-16
}

have_libs() { [[ -f "$LIBS/.complete" && "$(cat "$LIBS/.complete")" == "$(pom_digest)" ]]; }

need_libs() {
    have_libs || die "the Kafka $KAFKA_VERSION jars are not in $LIBS: run 'bash deploy/kafka/kafka.sh fetch' (or make test) first, or set KAFKA_BOOTSTRAP=host:port"
}

# --- fetch -----------------------------------------------------------------------------------------------

cmd_fetch() {
    if [[ -n "${KAFKA_BOOTSTRAP:-}" ]]; then
        say "KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP is set: using that broker, fetching nothing"
        return 0
    fi
    need_java
    if have_libs; then
        return 0
    fi
    need_maven
    say "fetching Apache Kafka $KAFKA_VERSION jars from Maven Central into $LIBS (once)"
    mkdir -p "$CACHE"
    # Copy into a private folder, then rename: two sessions fetching at once never see a half-filled libs/.
    local tmp
    tmp="$(mktemp -d "$CACHE/.kafka-fetch.XXXXXX")"
    if ! mvn -q -B -f "$POM" dependency:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$tmp/libs" >"$tmp/mvn.log" 2>&1; then
        tail -n 30 "$tmp/mvn.log" >&2
        rm -rf "$tmp"
        die "Maven could not fetch org.apache.kafka:kafka_2.13:$KAFKA_VERSION (see above: network, proxy or ~/.m2/settings.xml?), or set KAFKA_BOOTSTRAP=host:port"
    fi
    pom_digest >"$tmp/libs/.complete"
    mkdir -p "$(dirname "$LIBS")"
    # Never replace complete jars: a broker started by a concurrent fetch may be loading classes from them.
    if ! have_libs; then
        rm -rf "$LIBS"  # left by another pom.xml, or a fetch that was killed
        mv "$tmp/libs" "$LIBS" 2>/dev/null || true
    fi
    rm -rf "$tmp"
    have_libs || die "fetch finished but $LIBS is incomplete; delete it and run fetch again"
    say "fetched $(find "$LIBS" -name '*.jar' | wc -l) jars"
}

# --- helpers for start/stop/status ----------------------------------------------------------------------

port_answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null \
        || die "could not pick a free port (python3 missing?): pass --port N and --controller-port M"
}

# The PID is ours only if that process still runs kafka.Kafka with this dir's config (PIDs get reused).
# `ps -o args=` rather than /proc, so this also works on macOS.
pid_is_our_broker() {
    local pid="$1" dir="$2"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    ps -ww -o args= -p "$pid" 2>/dev/null | grep -q -- "kafka.Kafka $dir/server.properties"
}

# An absolute, symlink-free path, so start and stop name the same config file in the PID check.
abs_dir() {
    if [[ -d "$1" ]]; then (cd "$1" && pwd -P); else echo "$1"; fi
}

running_pid() {
    local dir="$1" pid
    [[ -f "$dir/broker.pid" ]] || return 1
    pid="$(cat "$dir/broker.pid")"
    pid_is_our_broker "$pid" "$dir" || return 1
    echo "$pid"
}

new_cluster_id() {
    # Kafka cluster ids are 16 random bytes in URL-safe base64 without padding; one starting with '-' would
    # read as a command-line flag, so draw again.
    local id
    while :; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
        [[ "$id" == -* ]] || { echo "$id"; return; }
    done
}

# The lines of server.properties that make a KRaft node (broker + controller) on 127.0.0.1: node id $1,
# voters $2 (id@host:port,...), client port $3, controller port $4, state folder $5.
node_lines() {
    cat <<EOF
process.roles=broker,controller
node.id=$1
controller.quorum.voters=$2
listeners=PLAINTEXT://127.0.0.1:$3,CONTROLLER://127.0.0.1:$4
advertised.listeners=PLAINTEXT://127.0.0.1:$3
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$5/data
EOF
}

write_config() {
    local dir="$1" port="$2" cport="$3" partitions="$4"
    cat >"$dir/server.properties" <<EOF
# Written by deploy/kafka/kafka.sh: one KRaft node (broker + controller) for a laptop or for tests.
$(node_lines 1 "1@127.0.0.1:$cport" "$port" "$cport" "$dir")
num.partitions=$partitions
auto.create.topics.enable=true
delete.topic.enable=true
# One node: every internal topic has one replica. Few partitions for them, so the first consumer group
# and the first transaction do not wait while 50 partitions are created.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# A consumer group starts at once instead of waiting 3 s for more members.
group.initial.rebalance.delay.ms=0
# Few threads: this broker shares a small machine with its clients.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.retention.hours=168
EOF
}

parse_dir_arg() {
    DIR="$DEFAULT_DIR"
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --dir) DIR="${2:?--dir needs a folder}"; shift 2 ;;
            *) die "unknown argument '$1' (usage: kafka.sh ${CMD} [--dir D])" ;;
        esac
    done
    DIR="$(abs_dir "$DIR")"
}

# Format the log dir of the node configured in $1/server.properties with cluster id $2 (once: kept if formatted).
format_node() {
    local dir="$1" cluster_id="$2"
    [[ -f "$dir/data/meta.properties" ]] && return 0
    if ! java -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
            -Dlog4j2.configurationFile="$HERE/log4j2.properties" -Dkafka.logs.dir="$dir" -cp "$LIBS/*" \
            kafka.tools.StorageTool format --config "$dir/server.properties" \
            --cluster-id "$cluster_id" --ignore-formatted >"$dir/format.log" 2>&1; then
        cat "$dir/format.log" >&2
        die "formatting the log dir $dir/data failed (see above)"
    fi
}

# Start the JVM of the node whose server.properties is in $1 (already formatted), in the background; its PID
# goes to $1/broker.pid and LAUNCHED_PID. $2: a PID whose end stops the node (empty: none).
launch_node() {
    local dir="$1" owner="$2" pid
    local cp="$LIBS/*"
    local log4j=(-Dlog4j2.configurationFile="$HERE/log4j2.properties" -Dkafka.logs.dir="$dir")
    # setsid: its own session, so a Ctrl-C meant for the caller does not kill the broker mid-teardown; the
    # caller stops it by PID. (setsid execs in place here, so $! is the JVM's PID.) macOS has no setsid.
    local detach=()
    command -v setsid >/dev/null 2>&1 && detach=(setsid)
    # shellcheck disable=SC2086  # KAFKA_HEAP_OPTS and KAFKA_JVM_OPTS are lists of flags
    ${detach[@]+"${detach[@]}"} java ${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m} -XX:+UseSerialGC -Djava.awt.headless=true \
        ${KAFKA_JVM_OPTS:-} "${log4j[@]}" -cp "$cp" \
        kafka.Kafka "$dir/server.properties" >"$dir/broker.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$dir/broker.pid"
    if [[ -n "$owner" ]]; then
        # A watchdog that outlives this script: when the owner dies without stopping the broker (SIGKILL, a
        # crashed test run, killed even before the broker was ready), stop it so no orphaned JVM holds the port
        # and the memory. It sleeps first: until setsid has exec'd the JVM, the PID's command line is not ours.
        (
            while sleep 1 && kill -0 "$owner" 2>/dev/null && pid_is_our_broker "$pid" "$dir"; do :; done
            if pid_is_our_broker "$pid" "$dir"; then stop_pid "$pid" "$dir"; fi
        ) >/dev/null 2>&1 </dev/null &
        disown
    fi

    LAUNCHED_PID="$pid"
}

# Wait until the node in $1 (JVM PID $2, client port $3) serves; on failure show its log, stop it, and die.
wait_node_ready() {
    local dir="$1" pid="$2" port="$3"
    # Ready = the server says it started (after the controller has elected itself and the broker has
    # caught up with the metadata log and been unfenced) and the port accepts connections.
    local timeout="${KAFKA_START_TIMEOUT:-90}" waited=0
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            say "the broker exited while starting; last lines of $dir/broker.log:"
            tail -n 40 "$dir/broker.log" >&2
            rm -f "$dir/broker.pid"
            die "Kafka broker failed to start on port $port"
        fi
        if grep -q "Kafka Server started" "$dir/broker.log" && port_answers "$port"; then
            break
        fi
        if (( waited >= timeout * 10 )); then
            say "the broker did not become ready within ${timeout}s; last lines of $dir/broker.log:"
            tail -n 40 "$dir/broker.log" >&2
            stop_pid "$pid" "$dir"
            die "Kafka broker failed to start on port $port (raise KAFKA_START_TIMEOUT on a slow machine)"
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    READY_WAITED="$((waited / 10)).$((waited % 10))"
}

# --- start -----------------------------------------------------------------------------------------------

cmd_start() {
    local port=9092 cport="" partitions=1 dir="$DEFAULT_DIR" owner=""
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --port) port="${2:?--port needs a number}"; shift 2 ;;
            --controller-port) cport="${2:?--controller-port needs a number}"; shift 2 ;;
            --dir) dir="${2:?--dir needs a folder}"; shift 2 ;;
            --partitions) partitions="${2:?--partitions needs a number}"; shift 2 ;;
            --exit-with) owner="${2:?--exit-with needs a PID}"; shift 2 ;;
            *) die "unknown argument '$1' (usage: kafka.sh start [--port N|auto] [--controller-port M] [--dir D] [--partitions P] [--exit-with PID])" ;;
        esac
    done
    if [[ -n "${KAFKA_BOOTSTRAP:-}" ]]; then
        say "KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP is set: using that broker, starting nothing"
        echo "$KAFKA_BOOTSTRAP"
        return 0
    fi
    need_java
    need_libs
    [[ "$port" == auto ]] && port="$(free_port)"
    [[ "$port" =~ ^[0-9]+$ ]] || die "--port '$port' is not a port number (or 'auto' for a free one)"
    mkdir -p "$dir"
    dir="$(abs_dir "$dir")"

    local pid
    if pid="$(running_pid "$dir")"; then
        say "a broker already runs from $dir (PID $pid) at $(cat "$dir/bootstrap")"
        cat "$dir/bootstrap"
        return 0
    fi
    port_answers "$port" \
        && die "port $port is already in use (another broker? 'kafka.sh status', 'make kafka-down', or choose --port N or set KAFKA_BOOTSTRAP=127.0.0.1:$port to use it)"
    if [[ -z "$cport" ]]; then
        cport="$(free_port)"
    fi
    port_answers "$cport" && die "controller port $cport is already in use: choose --controller-port M"

    write_config "$dir" "$port" "$cport" "$partitions"
    # Static voter set (controller.quorum.voters) -> a plain format with a fresh cluster id.
    format_node "$dir" "$(new_cluster_id)"

    launch_node "$dir" "$owner"
    pid="$LAUNCHED_PID"
    wait_node_ready "$dir" "$pid" "$port"
    echo "127.0.0.1:$port" >"$dir/bootstrap"
    say "Kafka $KAFKA_VERSION ready at 127.0.0.1:$port (PID $pid, state in $dir, started in ${READY_WAITED}s)"
    echo "127.0.0.1:$port"
}

# --- stop / status ---------------------------------------------------------------------------------------

stop_pid() {
    local pid="$1" dir="$2" timeout="${KAFKA_STOP_TIMEOUT:-30}" waited=0
    kill -TERM "$pid" 2>/dev/null || true
    while pid_is_our_broker "$pid" "$dir"; do
        if (( waited >= timeout * 10 )); then
            say "broker PID $pid did not stop within ${timeout}s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.2
            break
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    rm -f "$dir/broker.pid"
}

cmd_stop() {
    if [[ -n "${KAFKA_BOOTSTRAP:-}" ]]; then
        say "KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP is set: that broker is yours, stopping nothing"
        return 0
    fi
    parse_dir_arg "$@"
    local pid
    if ! pid="$(running_pid "$DIR")"; then
        rm -f "$DIR/broker.pid"
        say "no broker runs from $DIR"
        return 0
    fi
    stop_pid "$pid" "$DIR"
    say "stopped the broker (PID $pid) in $DIR"
}

cmd_status() {
    if [[ -n "${KAFKA_BOOTSTRAP:-}" ]]; then
        echo "using KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP (not managed by kafka.sh)"
        return 0
    fi
    parse_dir_arg "$@"
    local pid
    if pid="$(running_pid "$DIR")"; then
        echo "running: $(cat "$DIR/bootstrap" 2>/dev/null || echo '(starting)') PID $pid, state in $DIR"
    else
        echo "not running (state dir $DIR)"
        return 3
    fi
}

# --- cluster: N combined broker+controller nodes, N voters ---------------------------------------------------
#
# Layout of the state folder D: D/cluster.id, D/bootstrap (the client list), and one folder per node,
# D/node-I/{server.properties, data/, broker.log, broker.pid, bootstrap, owner}. A node keeps its ports for
# life, so `cluster start I` brings a killed node back where the other nodes and the clients expect it.

DEFAULT_CLUSTER_DIR="$HERE/.cluster"

write_node_config() {
    local dir="$1" node="$2" port="$3" cport="$4" voters="$5" n="$6"
    local rf=$(( n < 3 ? n : 3 )) isr=$(( n < 3 ? 1 : 2 ))
    cat >"$dir/server.properties" <<EOF
# Written by deploy/kafka/kafka.sh cluster: node $node of a $n-node KRaft cluster (broker + controller).
$(node_lines "$node" "$voters" "$port" "$cport" "$dir")
# Production durability: every topic (internal ones too) on $rf brokers, an acks=all write acknowledged only
# once $isr replicas have it, and never a leader elected from a replica that may have missed writes.
default.replication.factor=$rf
min.insync.replicas=$isr
unclean.leader.election.enable=false
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
auto.create.topics.enable=true
delete.topic.enable=true
num.partitions=1
group.initial.rebalance.delay.ms=0
# A killed broker is fenced by the controller within 3 s (default 9 s): its partitions get new leaders soon.
broker.session.timeout.ms=3000
broker.heartbeat.interval.ms=500
# Few threads: three brokers share a small machine with their clients.
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
num.replica.fetchers=1
log.retention.hours=168
EOF
}

parse_cluster_args() {
    CLUSTER_DIR="$DEFAULT_CLUSTER_DIR"
    OWNER=""
    ARGS=()
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --dir) CLUSTER_DIR="${2:?--dir needs a folder}"; shift 2 ;;
            --exit-with) OWNER="${2:?--exit-with needs a PID}"; shift 2 ;;
            -*) die "unknown argument '$1' (usage: kafka.sh cluster up N|down|status|kill N|stop N|start N [--dir D])" ;;
            *) ARGS+=("$1"); shift ;;
        esac
    done
    mkdir -p "$CLUSTER_DIR"
    CLUSTER_DIR="$(abs_dir "$CLUSTER_DIR")"
}

cluster_nodes() {
    local d
    for d in "$CLUSTER_DIR"/node-*; do
        [[ -f "$d/server.properties" ]] && echo "${d##*/node-}"
    done | sort -n
}

node_dir() {
    local node="$1"
    [[ "$node" =~ ^[0-9]+$ && -f "$CLUSTER_DIR/node-$node/server.properties" ]] \
        || die "no node '$node' in the cluster at $CLUSTER_DIR (nodes: $(cluster_nodes | tr '\n' ' '))"
    echo "$CLUSTER_DIR/node-$node"
}

cluster_up() {
    local n="${1:-3}"
    [[ "$n" =~ ^[0-9]+$ && "$n" -ge 1 ]] || die "cluster up N: '$n' is not a number of nodes (e.g. 3)"
    need_java
    need_libs
    local i running=0
    for i in $(cluster_nodes); do
        if running_pid "$CLUSTER_DIR/node-$i" >/dev/null; then running=$((running + 1)); fi
    done
    if (( running > 0 )); then
        say "a cluster already runs from $CLUSTER_DIR ($running nodes up); 'kafka.sh cluster down' stops it"
        cat "$CLUSTER_DIR/bootstrap"
        return 0
    fi
    # A fresh cluster every time: node folders left by an earlier cluster (other size, other ports) go.
    rm -rf "$CLUSTER_DIR"/node-* "$CLUSTER_DIR/cluster.id" "$CLUSTER_DIR/bootstrap"
    local ports=() cports=() voters="" bootstrap=""
    for i in $(seq 1 "$n"); do
        ports+=("$(free_port)")
        cports+=("$(free_port)")
    done
    for i in $(seq 1 "$n"); do
        voters+="${voters:+,}$i@127.0.0.1:${cports[$((i - 1))]}"
        bootstrap+="${bootstrap:+,}127.0.0.1:${ports[$((i - 1))]}"
    done
    new_cluster_id >"$CLUSTER_DIR/cluster.id"
    for i in $(seq 1 "$n"); do
        local dir="$CLUSTER_DIR/node-$i"
        mkdir -p "$dir"
        write_node_config "$dir" "$i" "${ports[$((i - 1))]}" "${cports[$((i - 1))]}" "$voters" "$n"
        echo "127.0.0.1:${ports[$((i - 1))]}" >"$dir/bootstrap"
        echo "$OWNER" >"$dir/owner"
        format_node "$dir" "$(cat "$CLUSTER_DIR/cluster.id")"
    done
    # All nodes at once: the controller quorum needs a majority of its voters before any broker serves.
    local pids=()
    for i in $(seq 1 "$n"); do
        launch_node "$CLUSTER_DIR/node-$i" "$OWNER"
        pids+=("$LAUNCHED_PID")
    done
    for i in $(seq 1 "$n"); do
        wait_node_ready "$CLUSTER_DIR/node-$i" "${pids[$((i - 1))]}" "${ports[$((i - 1))]}"
    done
    echo "$bootstrap" >"$CLUSTER_DIR/bootstrap"
    say "Kafka $KAFKA_VERSION cluster of $n nodes ready at $bootstrap (state in $CLUSTER_DIR)"
    echo "$bootstrap"
}

cluster_down() {
    local i pid pids=() nodes=()
    # SIGTERM to all at once: a node stopped after the others has no quorum for a controlled shutdown.
    for i in $(cluster_nodes); do
        if pid="$(running_pid "$CLUSTER_DIR/node-$i")"; then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
            nodes+=("$i")
        fi
    done
    for i in "${!pids[@]}"; do
        stop_pid "${pids[$i]}" "$CLUSTER_DIR/node-${nodes[$i]}"
        say "stopped node ${nodes[$i]} (PID ${pids[$i]})"
    done
}

cluster_status() {
    local i pid up=0 n=0
    for i in $(cluster_nodes); do
        n=$((n + 1))
        if pid="$(running_pid "$CLUSTER_DIR/node-$i")"; then
            up=$((up + 1))
            echo "node $i: running at $(cat "$CLUSTER_DIR/node-$i/bootstrap") PID $pid"
        else
            echo "node $i: not running ($(cat "$CLUSTER_DIR/node-$i/bootstrap"))"
        fi
    done
    (( n > 0 )) || { echo "no cluster in $CLUSTER_DIR"; return 3; }
    echo "$up of $n nodes running; bootstrap $(cat "$CLUSTER_DIR/bootstrap" 2>/dev/null)"
    (( up == n )) || return 3
}

cluster_kill() {
    local dir pid
    dir="$(node_dir "${1:-}")"
    pid="$(running_pid "$dir")" || die "node $1 is not running"
    kill -KILL "$pid"
    while pid_is_our_broker "$pid" "$dir"; do sleep 0.05; done
    rm -f "$dir/broker.pid"
    say "killed node $1 (PID $pid, SIGKILL)"
}

cluster_stop() {
    local dir pid
    dir="$(node_dir "${1:-}")"
    if ! pid="$(running_pid "$dir")"; then
        say "node $1 is not running"
        return 0
    fi
    stop_pid "$pid" "$dir"
    say "stopped node $1 (PID $pid)"
}

cluster_start() {
    local dir pid port
    dir="$(node_dir "${1:-}")"
    need_java
    need_libs
    if pid="$(running_pid "$dir")"; then
        say "node $1 already runs (PID $pid)"
        return 0
    fi
    port="$(cut -d: -f2 "$dir/bootstrap")"
    port_answers "$port" && die "port $port of node $1 is taken by another process: cannot start the node there"
    launch_node "$dir" "$(cat "$dir/owner" 2>/dev/null)"
    pid="$LAUNCHED_PID"
    wait_node_ready "$dir" "$pid" "$port"
    say "node $1 ready at $(cat "$dir/bootstrap") (PID $pid, started in ${READY_WAITED}s)"
}

cmd_cluster() {
    local sub="${1:-}"
    [[ $# -gt 0 ]] && shift
    if [[ -n "${KAFKA_BOOTSTRAP:-}" ]]; then
        say "KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP is set: using that cluster, managing nothing"
        [[ "$sub" == up ]] && echo "$KAFKA_BOOTSTRAP"
        return 0
    fi
    parse_cluster_args "$@"
    set -- ${ARGS[@]+"${ARGS[@]}"}
    case "$sub" in
        up) cluster_up "$@" ;;
        down) cluster_down ;;
        status) cluster_status ;;
        kill) cluster_kill "$@" ;;
        stop) cluster_stop "$@" ;;
        start) cluster_start "$@" ;;
        *) die "unknown 'cluster ${sub}': use cluster up N | down | status | kill NODE | stop NODE | start NODE" ;;
    esac
}

CMD="${1:-}"
[[ $# -gt 0 ]] && shift
case "$CMD" in
    fetch) cmd_fetch "$@" ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    status) cmd_status "$@" ;;
    cluster) cmd_cluster "$@" ;;
    *) sed -n '2,/^set /{/^set /d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
esac
