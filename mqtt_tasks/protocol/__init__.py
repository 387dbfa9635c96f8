"""The wire contract: pure models, topics and codec. No sockets, threads or clocks."""
