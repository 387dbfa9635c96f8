"""The only package that imports paho: connect, publish, subscribe, acknowledge.

Its parts, in the order a message meets them:

- ``connection``     the ``Connection`` facade: lifecycle, publish, subscribe, ack; wires the parts
- ``negotiation``    the CONNECT: protocol version (MQTT 5, else 3.1.1), TLS, credentials, Will, errors
- ``subscriptions``  remembered subscriptions, re-sent on every connect; ready once all are granted
- ``inflight``       our publishes until PUBACK (``flush``), received messages until acked
- ``messages``       ``Message`` and ``Will``: what crosses the boundary, free of paho types
- ``paho_internals`` the one module that touches paho's private API (fast reads, writes, decoding)

Every paho, socket and TLS failure is translated here into an exception of ``mqtt_tasks.errors``.
"""

from .connection import Connection
from .messages import Message, Will

__all__ = ["Connection", "Message", "Will"]
