"""The fault-injection suite's parts: tasks that keep a ledger, a TCP proxy that partitions and
delays, and a cluster of real processes (Mosquitto, the installed CLIs) to inject faults into.

The scenarios live in tests/test_faults.py. Every run is counted three ways, independently:
the final status events on the wire, the ledger the task bodies write, and the coordinator's
record read from its SQLite file after it stopped.
"""
