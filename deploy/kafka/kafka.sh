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

write_config() {
    local dir="$1" port="$2" cport="$3" partitions="$4"
    cat >"$dir/server.properties" <<EOF
# Written by deploy/kafka/kafka.sh: one KRaft node (broker + controller) for a laptop or for tests.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
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
    local cp="$LIBS/*"
    local log4j=(-Dlog4j2.configurationFile="$HERE/log4j2.properties" -Dkafka.logs.dir="$dir")
    if [[ ! -f "$dir/data/meta.properties" ]]; then
        # Static voter set (controller.quorum.voters) -> a plain format with a fresh cluster id.
        if ! java -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC "${log4j[@]}" -cp "$cp" \
                kafka.tools.StorageTool format --config "$dir/server.properties" \
                --cluster-id "$(new_cluster_id)" --ignore-formatted >"$dir/format.log" 2>&1; then
            cat "$dir/format.log" >&2
            die "formatting the log dir $dir/data failed (see above)"
        fi
    fi

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
    echo "127.0.0.1:$port" >"$dir/bootstrap"
    say "Kafka $KAFKA_VERSION ready at 127.0.0.1:$port (PID $pid, state in $dir, started in $((waited / 10)).$((waited % 10))s)"
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

CMD="${1:-}"
[[ $# -gt 0 ]] && shift
case "$CMD" in
    fetch) cmd_fetch "$@" ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    status) cmd_status "$@" ;;
    *) sed -n '2,/^set /{/^set /d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
esac
