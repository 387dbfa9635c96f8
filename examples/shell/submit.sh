#!/usr/bin/env sh
# Submit one task with mosquitto_pub and wait for its final status with mosquitto_sub.
# Usage: ./submit.sh TASK [JSON_ARGS]        e.g. ./submit.sh add '[2,3]'
# Env:   MQTT_HOST (127.0.0.1), MQTT_PORT (1883), PREFIX (mqtt-tasks), QUEUE (default), WAIT (30 s)
# Prints each status event of the task; exits 0 at its final event, 1 if none came within WAIT.
set -eu
task=${1:?usage: submit.sh TASK [JSON_ARGS]}
args=${2:-[]}
host=${MQTT_HOST:-127.0.0.1}
port=${MQTT_PORT:-1883}
prefix=${PREFIX:-mqtt-tasks}
queue=${QUEUE:-default}
wait=${WAIT:-30}
id="sh-$(date +%s)-$$"

dir=$(mktemp -d)
mkfifo "$dir/events"
sub=
cleanup() { if [ -n "$sub" ]; then kill "$sub" 2>/dev/null || true; fi; rm -rf "$dir"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

publish() {
  mosquitto_pub -h "$host" -p "$port" -q 1 -t "$prefix/tasks/$queue" \
    -m "{\"id\":\"$id\",\"task\":\"$task\",\"args\":$args}"
}

# Subscribe first, so the result cannot slip by: -d prints the broker's SUBACK, and the task is
# published only once it is in. Debug lines start with "Client"; payloads are JSON objects.
# mosquitto_sub buffers its debug lines in a pipe: stdbuf (GNU coreutils) makes them arrive at
# once; without it, the task is published after half a second instead.
if command -v stdbuf >/dev/null 2>&1; then
  stdbuf -oL mosquitto_sub -d -h "$host" -p "$port" -q 1 -t "$prefix/status/$id" -W "$wait" > "$dir/events" 2>/dev/null &
  sub=$!
else
  mosquitto_sub -d -h "$host" -p "$port" -q 1 -t "$prefix/status/$id" -W "$wait" > "$dir/events" 2>/dev/null &
  sub=$!
  (sleep 0.5; publish) &
fi
status=1
while IFS= read -r line; do
  case "$line" in
    *"received SUBACK"*)
      if command -v stdbuf >/dev/null 2>&1; then publish; fi ;;
    "{"*)
      echo "$line"
      case "$line" in *'"final":true'*) status=0; break ;; esac ;;
  esac
done < "$dir/events"
if [ "$status" -ne 0 ]; then
  echo "submit.sh: no final status for task $id within ${wait}s" >&2
fi
exit "$status"
