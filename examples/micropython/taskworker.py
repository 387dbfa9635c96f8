"""A minimal mqtt-tasks worker for MicroPython's umqtt.simple (MQTT 3.1.1, one task at a time).

Speaks docs/protocol.md: takes tasks from $share/{group}/P/tasks/{queue} and, from a coordinator,
P/inbox/{id}; with labels (``labels=("camera",)``, docs/routing.md) also from the routed topics
$share/{group}/P/routed/{queue}/{labels}, and hands a task whose ``requires`` it cannot meet to the
coordinator (or, with none online, forwards it to its routed topic); publishes started /
succeeded / failed events on P/status/{id} (and the final one on the task's reply_to), a
retained heartbeat on P/workers/{id} with a retained Last Will "offline", and reports input it
rejects on P/errors. Reconnects with back-off when the connection drops.

Written for umqtt.simple (>= 1.5; tested with 1.8.0) as it is:
- it writes len() of a topic or payload as its length, so a str with a non-ASCII character makes
  a malformed packet: everything given to it here is UTF-8 bytes;
- it acknowledges a message when its callback returns, and a QoS 1 publish reads (and hands to the
  callback) whatever arrives before its PUBACK: the callback only stores messages;
- a dropped connection surfaces as OSError, or IndexError / AssertionError on a short read.

    from umqtt.simple import MQTTClient
    from taskworker import Worker
    worker = Worker(MQTTClient("esp32-1", "192.168.1.10", keepalive=30), "esp32-1")

    @worker.task("add")
    def add(a, b):
        return a + b

    worker.run_forever()

Limits, by design: one task at a time (concurrency 1); a task's `timeout` is not enforced; no
heartbeat while a task runs (keep tasks shorter than a heartbeat interval, or call
``worker.heartbeat()`` from inside long ones); no cancellation (P/control is not read).
"""

import json
import time

try:
    from time import sleep_ms, ticks_add, ticks_diff, ticks_ms
except ImportError:  # CPython
    def ticks_ms():
        return int(time.monotonic() * 1000)

    def ticks_add(ticks, delta):
        return ticks + delta

    def ticks_diff(a, b):
        return a - b

    def sleep_ms(ms):
        time.sleep(ms / 1000)

# Some MicroPython ports count time from 2000-01-01; the protocol uses the Unix epoch.
try:
    _EPOCH_OFFSET = 946684800 if time.gmtime(0)[0] == 2000 else 0
except AttributeError:  # older ports: only localtime
    _EPOCH_OFFSET = 946684800 if time.localtime(0)[0] == 2000 else 0
_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-"
VERSION = "micropython-example-1"


def now():
    return time.time() + _EPOCH_OFFSET


def valid_id(value):
    """1-128 characters of A-Z a-z 0-9 _ . : - (ure cannot count repetitions, so no regex)."""
    return isinstance(value, str) and 0 < len(value) <= 128 and all(c in _ID_CHARS for c in value)


def valid_label(value):
    """1-64 characters of A-Z a-z 0-9 _ . : - (docs/routing.md)."""
    return isinstance(value, str) and 0 < len(value) <= 64 and all(c in _ID_CHARS for c in value)


def combinations(labels, most=3):
    """The routed-topic levels of a worker with `labels`: every combination of 1 to `most` of them,
    sorted, joined by "," (no itertools on MicroPython)."""
    out = []

    def grow(start, chosen):
        if chosen:
            out.append(",".join(chosen))
        if len(chosen) < most:
            for i in range(start, len(labels)):
                grow(i + 1, chosen + [labels[i]])

    grow(0, [])
    return sorted(out, key=lambda level: (level.count(","), level))


class BadTask(ValueError):
    pass


class Worker:
    def __init__(self, client, worker_id, prefix="mqtt-tasks", queues=("default",), group="workers",
                 heartbeat_s=10, max_pending=4, max_held=64, backoff_ms=1000, max_backoff_ms=30000,
                 connect_timeout_s=10, labels=()):
        if not valid_id(worker_id):
            raise ValueError("invalid worker id")
        if not all(valid_label(label) for label in labels):
            raise ValueError("invalid label")
        self.labels = sorted(set(labels))
        self.client = client
        self.worker_id = worker_id
        self.prefix = prefix
        self.queues = list(queues)
        self.group = group
        self.heartbeat_s = heartbeat_s
        self.max_pending = max_pending  # held while a coordinator can take the rest (deferred)
        self.max_held = max_held  # held with no coordinator; beyond, a task fails ("WorkerFull")
        self.backoff_ms = backoff_ms
        self.max_backoff_ms = max_backoff_ms
        self.connect_timeout_s = connect_timeout_s
        self.functions = {}
        self.waiting = []  # (topic, payload) received and acknowledged, not started yet
        self.unsent = []  # (topic, payload, retain) as bytes, to publish once connected again
        self.running = None
        self.connected = False
        self.coordinator_online = False
        self._inbox = self._topic("inbox", worker_id)
        self._last_beat = ticks_ms()
        self._backoff = backoff_ms
        self._retry_at = ticks_ms()

    # -- registration --------------------------------------------------------------------
    def task(self, name):
        def register(fn):
            self.functions[name] = fn
            return fn
        return register

    # -- topics --------------------------------------------------------------------------
    def _topic(self, *levels):
        return "/".join((self.prefix,) + levels)

    # -- connection ----------------------------------------------------------------------
    def start(self):
        """Connect, subscribe, heartbeat. Raises if the broker cannot be reached (poll() and
        run_forever() retry with back-off instead)."""
        self.client.set_callback(self._on_message)
        self.client.set_last_will(_b(self._topic("workers", self.worker_id)), _b(self._state("offline")),
                                  retain=True, qos=1)
        self.client.connect(clean_session=True, timeout=self.connect_timeout_s)
        self.connected = True
        # umqtt.simple writes a packet in pieces: with Nagle on, each publish waits ~40 ms.
        try:  # noqa: SIM105 (no contextlib on MicroPython); a port without it is just slower
            self.client.sock.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY (Linux and lwIP)
        except Exception:
            pass
        # Presence first: the retained P/coordinator says whether to defer what it cannot hold.
        self.client.subscribe(_b(self._topic("coordinator")), qos=1)
        self.client.subscribe(_b(self._inbox), qos=1)
        for queue in self.queues:
            self.client.subscribe(_b("$share/{}/{}".format(self.group, self._topic("tasks", queue))), qos=1)
            for level in combinations(self.labels):
                self.client.subscribe(_b("$share/{}/{}".format(self.group, self._topic("routed", queue, level))),
                                      qos=1)
        self.heartbeat()
        pending, self.unsent = self.unsent, []
        for message in pending:
            self._send(message)
        return self

    def stop(self):
        """Publish "offline" and disconnect (no Last Will)."""
        if self.connected:
            self._publish(self._topic("workers", self.worker_id), self._state("offline"), retain=True)
        if self.connected:  # still: that publish may have found the connection gone
            self.connected = False
            try:
                self.client.disconnect()
            except OSError as exc:
                print("taskworker: disconnect:", repr(exc))

    def _reconnect(self):
        try:
            self.start()
        except Exception as exc:  # OSError, umqtt's MQTTException, IndexError / AssertionError (short read)
            self._lost(exc)
        if self.connected:
            self._backoff = self.backoff_ms
        else:
            self._backoff = min(self._backoff * 2, self.max_backoff_ms)

    def _lost(self, exc):
        """The connection dropped (or could not be made): try again after the back-off, plus a
        little jitter so that devices do not all come back at the same moment."""
        self.connected = False
        delay = self._backoff + ticks_ms() % (self._backoff // 4 + 1)
        self._retry_at = ticks_add(ticks_ms(), delay)
        print("taskworker: connection lost (" + repr(exc) + "); next try in", delay, "ms")

    # -- main loop -----------------------------------------------------------------------
    def run_forever(self, idle_ms=50):
        while True:
            if not self.poll():
                sleep_ms(idle_ms)

    def poll(self):
        """Reconnect if due, read what arrived, heartbeat when due, run at most one task.
        True if it ran one. Tasks held in memory run while disconnected; their events wait."""
        if not self.connected and ticks_diff(ticks_ms(), self._retry_at) >= 0:
            self._reconnect()
        if self.connected:
            try:
                while self.client.check_msg() is not None:
                    pass
            except Exception as exc:  # see _reconnect
                self._lost(exc)
        if self.connected and ticks_diff(ticks_ms(), self._last_beat) >= self.heartbeat_s * 1000:
            self.heartbeat()
        self._make_room()
        if not self.waiting:
            return False
        self._handle(*self.waiting.pop(0))
        return True

    def heartbeat(self):
        """Publish the retained worker state (call it from inside a long task to stay alive)."""
        self._last_beat = ticks_ms()
        self._publish(self._topic("workers", self.worker_id), self._state("online"), retain=True)

    # -- receiving (the umqtt callback: store, never publish from here) --------------------
    def _on_message(self, topic, payload):
        topic = topic.decode()  # a topic is UTF-8: the broker checks it
        if topic == self._topic("coordinator"):
            presence = _loads(payload)
            self.coordinator_online = isinstance(presence, dict) and presence.get("state") == "online"
            return
        self.waiting.append((topic, bytes(payload)))

    def _make_room(self):
        """Hand back the newest tasks over the limit: deferred to the coordinator when one is
        online (it sends them back through P/inbox/{id} when this worker has a free slot; those
        are kept), else failed over max_held. Never re-published to the shared queue, where this
        worker, maybe its only member, would get them straight back."""
        limit = self.max_pending if self.coordinator_online else self.max_held
        index = len(self.waiting) - 1
        while len(self.waiting) > limit and index >= 0:
            if self.waiting[index][0] != self._inbox:
                self._hand_back(*self.waiting.pop(index))  # may append newer ones: index stays valid
            index -= 1

    def _hand_back(self, topic, payload):
        try:
            task = self._decode(topic, payload)
        except BadTask as exc:
            self._report(topic, payload, str(exc), _guess_id(payload))
            return
        if self.coordinator_online:
            self._status(task, "deferred", {"reason": "no free slot", "body": task})
        else:
            message = "worker " + self.worker_id + " holds " + str(len(self.waiting)) + " tasks; no coordinator online"
            self._finish(task, "failed", {"error": {"type": "WorkerFull", "message": message}}, final=True)

    # -- one task ------------------------------------------------------------------------
    def _decode(self, topic, payload):
        try:
            text = payload.decode()  # MicroPython's json.loads would take bytes unchecked
        except UnicodeError:
            raise BadTask("not valid UTF-8") from None
        try:
            task = json.loads(text)
        except ValueError:
            raise BadTask("not valid JSON") from None
        if not isinstance(task, dict):
            raise BadTask("expected a JSON object")
        if "id" not in task:
            raise BadTask("missing required field 'id'")
        if not valid_id(task["id"]):
            raise BadTask("field 'id': 1-128 characters of A-Z a-z 0-9 _ . : -")
        if not isinstance(task.get("task"), str) or not task["task"]:
            raise BadTask("missing required field 'task'")
        if not isinstance(task.setdefault("args", []), list):
            raise BadTask("field 'args': expected a JSON array")
        if not isinstance(task.setdefault("kwargs", {}), dict):
            raise BadTask("field 'kwargs': expected a JSON object")
        attempt = task.setdefault("attempt", 1)
        if not isinstance(attempt, int) or attempt < 1:
            raise BadTask("field 'attempt': expected an integer >= 1")
        self._routing_fields(topic, task)
        return task

    def _routing_fields(self, topic, task):
        """The task's queue (from the topic where absent) and its checked ``requires``."""
        routed = topic.startswith(self._topic("routed") + "/")
        levels = topic.split("/")
        task.setdefault("queue", self.queues[0] if topic == self._inbox else levels[-2 if routed else -1])
        requires = task.get("requires")
        if requires is None and routed:  # the routed topic's labels are the task's
            requires = task["requires"] = levels[-1].split(",")
        if requires is not None and not (isinstance(requires, list) and len(requires) <= 3
                                         and all(valid_label(label) for label in requires)):
            raise BadTask("field 'requires': a list of at most 3 labels")

    def _unmatched(self, topic, task):
        """The task requires a label this worker lacks: to the coordinator, else to its routed
        topic (from P/tasks only), else failed. True if it was settled here."""
        lacking = [label for label in task.get("requires") or () if label not in self.labels]
        if not lacking:
            return False
        reason = "worker " + self.worker_id + " lacks label(s) " + ", ".join(lacking)
        if self.coordinator_online:
            self._status(task, "deferred", {"reason": reason, "body": task, "routed": True})
        elif topic.startswith(self._topic("tasks") + "/"):
            self._publish(self._topic("routed", task["queue"], ",".join(sorted(task["requires"]))), json.dumps(task))
        else:
            self._report(topic, b"", reason + " and no coordinator is online", task["id"])
            self._finish(task, "failed", {"error": {"type": "LabelMismatchError", "message": reason}}, final=True)
        return True

    def _handle(self, topic, payload):
        try:
            task = self._decode(topic, payload)
        except BadTask as exc:
            self._report(topic, payload, str(exc), _guess_id(payload))
            return
        expires_at = task.get("expires_at")
        if isinstance(expires_at, (int, float)) and expires_at < now():
            self._finish(task, "expired", {"reason": "expired before it was started"}, final=True)
            return
        if self._unmatched(topic, task):
            return
        fn = self.functions.get(task["task"])
        if fn is None:
            error = {"type": "UnknownTaskError", "message": "no task registered under {!r}".format(task["task"])}
            self._finish(task, "failed", {"error": error}, final=True)
            return
        self._run(task, fn)

    def _run(self, task, fn):
        self.running = task
        self._status(task, "started", {})
        try:
            result = fn(*task["args"], **task["kwargs"])
            json.dumps(result)
        except Exception as exc:  # a task's failure is reported, never raised into the loop
            error = {"type": type(exc).__name__, "message": str(exc)}
            final = task["attempt"] >= (task.get("max_attempts") or 3) or not self.coordinator_online
            self.running = None
            self._finish(task, "failed", {"error": error, "max_attempts": task.get("max_attempts") or 3}, final)
            return
        self.running = None
        self._finish(task, "succeeded", {"result": result}, final=True)

    # -- publishing ----------------------------------------------------------------------
    def _finish(self, task, state, extra, final):
        if final:
            extra["final"] = True
        payload = self._status(task, state, extra)
        reply_to = task.get("reply_to")
        if final and isinstance(reply_to, str) and reply_to and not _forbidden_reply(reply_to, self.prefix):
            self._publish(reply_to, payload)

    def _status(self, task, state, extra):
        event = {"id": task["id"], "state": state, "attempt": task["attempt"], "worker": self.worker_id,
                 "ts": now(), "task": task["task"], "queue": task.get("queue")}
        if "correlation" in task:
            event["correlation"] = task["correlation"]
        event.update(extra)
        payload = json.dumps(event)
        self._publish(self._topic("status", task["id"]), payload)
        return payload

    def _report(self, topic, payload, reason, task_id=None):
        report = {"component": "worker", "source": self.worker_id, "topic": topic, "reason": reason,
                  "payload": _text(payload, 512), "size": len(payload), "ts": now()}
        if task_id is not None:
            report["id"] = task_id
        self._publish(self._topic("errors"), json.dumps(report))

    def _state(self, state):
        held = [] if self.running is None else [{"id": self.running["id"], "attempt": self.running["attempt"]}]
        online = state == "online"
        return json.dumps({
            "worker": self.worker_id, "state": state, "queues": self.queues, "concurrency": 1,
            "free": 1 if (online and self.running is None and not self.waiting) else 0,
            "waiting": len(self.waiting) if online else 0,
            "tasks": held if online else [], "ts": now(), "heartbeat_s": self.heartbeat_s,
            "group": self.group, "version": VERSION, "labels": self.labels,
        })

    def _publish(self, topic, payload, retain=False):
        self._send((_b(topic), _b(payload), retain))

    def _send(self, message):
        """QoS 1 publish of (topic, payload, retain) bytes. If the connection is down (or drops
        now) an event waits in `unsent` for the next connection; a heartbeat is just dropped."""
        if self.connected:
            try:
                self.client.publish(message[0], message[1], retain=message[2], qos=1)
                return
            except Exception as exc:  # see _reconnect
                self._lost(exc)
        if not message[2] and len(self.unsent) < self.max_held:
            self.unsent.append(message)


def _forbidden_reply(topic, prefix):
    """Never reply on a wildcard, a $ topic, or a protocol topic other than P/replies/..."""
    if "+" in topic or "#" in topic or topic.startswith("$"):
        return True
    return topic.startswith(prefix + "/") and not topic.startswith(prefix + "/replies/")


def _b(text):
    """UTF-8 bytes: umqtt.simple takes len() of what it is given as its length in bytes."""
    return text.encode() if isinstance(text, str) else text


def _loads(payload):
    """The JSON value of a payload, or None if it is not UTF-8 JSON."""
    try:
        return json.loads(payload.decode())
    except ValueError:  # UnicodeError is a ValueError, on MicroPython too
        return None


def _guess_id(payload):
    value = _loads(payload)
    return value.get("id") if isinstance(value, dict) and valid_id(value.get("id")) else None


def _text(payload, limit):
    """The first `limit` bytes as text for an error report: UTF-8 where it is (dropping a character
    cut at the limit), else ASCII with U+FFFD for each other byte. (MicroPython's bytes.decode()
    ignores errors="replace" and raises.)"""
    data = bytes(payload[:limit])
    for cut in range(4 if len(payload) > limit else 1):
        try:
            return data[:len(data) - cut].decode()
        except UnicodeError:
            pass
    return "".join(chr(b) if b < 128 else "\ufffd" for b in data)
