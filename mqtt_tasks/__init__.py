"""mqtt-tasks: distributed tasks over MQTT."""

__version__ = "0.1.0"
