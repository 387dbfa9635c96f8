#!/usr/bin/env sh
# Submit one task with mosquitto_pub and wait for its final status with mosquitto_sub.
# Usage: ./submit.sh TASK [JSON_ARGS]        e.g. ./submit.sh add '[2,3]'
# Env:   MQTT_HOST (127.0.0.1), MQTT_PORT (1883), PREFIX (mqtt-tasks), QUEUE (default), WAIT (30 s)
set -eu
task=${1:?usage: submit.sh TASK [JSON_ARGS]}
args=${2:-[]}
host=${MQTT_HOST:-127.0.0.1}
port=${MQTT_PORT:-1883}
prefix=${PREFIX:-mqtt-tasks}
queue=${QUEUE:-default}
id="sh-$(date +%s)-$$"

# Subscribe first, so the result cannot slip by; stop at the first final event.
mosquitto_sub -h "$host" -p "$port" -q 1 -t "$prefix/status/$id" -W "${WAIT:-30}" \
  | while IFS= read -r event; do
      echo "$event"
      case "$event" in *'"final":true'*) exit 0 ;; esac
    done &
sub=$!
# Give mosquitto_sub a moment to subscribe before publishing.
sleep 0.3
mosquitto_pub -h "$host" -p "$port" -q 1 -t "$prefix/tasks/$queue" \
  -m "{\"id\":\"$id\",\"task\":\"$task\",\"args\":$args}"
wait "$sub"
