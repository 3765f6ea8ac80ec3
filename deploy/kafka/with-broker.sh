#!/usr/bin/env bash
# Run a command with a Kafka broker and KAFKA_BOOTSTRAP exported to it.
#
#   with-broker.sh COMMAND [ARGS...]
#
# KAFKA_BOOTSTRAP already set: run COMMAND against that broker, start nothing. Otherwise start a fresh broker
# (kafka.sh start) on free ports in a temporary folder, run COMMAND, and stop the broker and delete the folder
# when COMMAND ends, fails or is interrupted. Exit status is COMMAND's.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[[ $# -gt 0 ]] || { sed -n '2,7{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2; exit 2; }

if [[ -n "${KAFKA_BOOTSTRAP:-}" ]]; then
    exec "$@"
fi

STATE_DIR="$(mktemp -d "${TMPDIR:-/tmp}/mindstream-kafka.XXXXXX")"
cleanup() {
    bash "$HERE/kafka.sh" stop --dir "$STATE_DIR" >/dev/null 2>&1 || true
    rm -rf "$STATE_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

KAFKA_BOOTSTRAP="$(bash "$HERE/kafka.sh" start --port auto --dir "$STATE_DIR" --exit-with $$)"
export KAFKA_BOOTSTRAP
"$@"
