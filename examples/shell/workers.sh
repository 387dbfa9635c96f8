#!/usr/bin/env sh
# List the workers from their retained heartbeats (one JSON line per worker).
set -eu
mosquitto_sub -h "${MQTT_HOST:-127.0.0.1}" -p "${MQTT_PORT:-1883}" \
  -t "${PREFIX:-mqtt-tasks}/workers/+" -W 1 -v 2>/dev/null || true
