"""A minimal mqtt-tasks worker for MicroPython's umqtt.simple (MQTT 3.1.1, one task at a time).

Speaks docs/protocol.md: takes tasks from $share/{group}/P/tasks/{queue}, publishes started /
succeeded / failed events on P/status/{id} (and the final one on the task's reply_to), a
retained heartbeat on P/workers/{id} with a retained Last Will "offline", and reports input it
rejects on P/errors. Runs under CPython too (the tests drive it against a real Mosquitto).

    from umqtt.simple import MQTTClient
    from taskworker import Worker
    worker = Worker(MQTTClient("esp32-1", "192.168.1.10", keepalive=30), "esp32-1")

    @worker.task("add")
    def add(a, b):
        return a + b

    worker.run_forever()

Limits, by design: one task at a time (concurrency 1); a task's `timeout` is not enforced; no
heartbeat while a task runs (keep tasks shorter than a heartbeat interval, or call
``worker.heartbeat()`` from inside long ones).
"""

import json
import time

try:
    from time import sleep_ms, ticks_diff, ticks_ms
except ImportError:  # CPython
    def ticks_ms():
        return int(time.monotonic() * 1000)

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


class BadTask(ValueError):
    pass


class Worker:
    def __init__(self, client, worker_id, prefix="mqtt-tasks", queues=("default",), group="workers",
                 heartbeat_s=10, max_pending=4):
        if not valid_id(worker_id):
            raise ValueError("invalid worker id")
        self.client = client
        self.worker_id = worker_id
        self.prefix = prefix
        self.queues = list(queues)
        self.group = group
        self.heartbeat_s = heartbeat_s
        self.max_pending = max_pending
        self.functions = {}
        self.inbox = []  # (topic, payload) received; the PUBACK went out when the callback returned
        self.running = None
        self.coordinator_online = False
        self._last_beat = None

    # -- registration --------------------------------------------------------------------
    def task(self, name):
        def register(fn):
            self.functions[name] = fn
            return fn
        return register

    # -- topics --------------------------------------------------------------------------
    def _topic(self, *levels):
        return "/".join((self.prefix,) + levels)

    # -- lifecycle -----------------------------------------------------------------------
    def start(self):
        self.client.set_callback(self._on_message)
        self.client.set_last_will(self._topic("workers", self.worker_id), self._state("offline"), retain=True, qos=1)
        self.client.connect(clean_session=True)
        for queue in self.queues:
            self.client.subscribe("$share/{}/{}".format(self.group, self._topic("tasks", queue)), qos=1)
        self.client.subscribe(self._topic("coordinator"), qos=1)
        self.heartbeat()
        return self

    def stop(self):
        self._publish(self._topic("workers", self.worker_id), self._state("offline"), retain=True)
        self.client.disconnect()

    def run_forever(self, idle_ms=50):
        self.start()
        while True:
            if not self.poll():
                sleep_ms(idle_ms)

    def poll(self):
        """Read what arrived, run at most one task, heartbeat when due. True if it did work."""
        while self.client.check_msg() is not None:
            pass
        if self._last_beat is None or ticks_diff(ticks_ms(), self._last_beat) >= self.heartbeat_s * 1000:
            self.heartbeat()
        if not self.inbox:
            return False
        while len(self.inbox) > self.max_pending:
            self._hand_back(*self.inbox.pop())
        topic, payload = self.inbox.pop(0)
        self._handle(topic, payload)
        return True

    def heartbeat(self):
        self._last_beat = ticks_ms()
        self._publish(self._topic("workers", self.worker_id), self._state("online"), retain=True)

    # -- receiving (the umqtt callback: store, never publish from here) --------------------
    def _on_message(self, topic, payload):
        topic = topic.decode() if isinstance(topic, bytes) else topic
        if topic == self._topic("coordinator"):
            try:
                self.coordinator_online = json.loads(payload).get("state") == "online"
            except (ValueError, AttributeError):
                self.coordinator_online = False
            return
        self.inbox.append((topic, bytes(payload)))

    def _hand_back(self, topic, payload):
        """Over max_pending: the coordinator takes it (deferred), else it goes back to its queue."""
        try:
            task = self._decode(topic, payload)
        except BadTask as exc:
            self._report(topic, payload, str(exc))
            return
        if self.coordinator_online:
            self._status(task, "deferred", {"reason": "no free slot", "body": task})
        else:
            self._publish(topic, payload)

    # -- one task ------------------------------------------------------------------------
    def _decode(self, topic, payload):
        try:
            task = json.loads(payload)
        except (ValueError, UnicodeError):
            raise BadTask("not valid UTF-8 JSON") from None
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
        task.setdefault("queue", topic.rsplit("/", 1)[-1])
        return task

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
                  "payload": bytes(payload[:512]).decode("utf-8", "replace"), "size": len(payload), "ts": now()}
        if task_id is not None:
            report["id"] = task_id
        self._publish(self._topic("errors"), json.dumps(report))

    def _state(self, state):
        held = [] if self.running is None else [{"id": self.running["id"], "attempt": self.running["attempt"]}]
        return json.dumps({
            "worker": self.worker_id, "state": state, "queues": self.queues, "concurrency": 1,
            "free": 0 if (state != "online" or self.running is not None) else 1,
            "tasks": held if state == "online" else [], "ts": now(), "heartbeat_s": self.heartbeat_s,
            "group": self.group, "version": VERSION,
        })

    def _publish(self, topic, payload, retain=False):
        self.client.publish(topic, payload, retain=retain, qos=1)


def _forbidden_reply(topic, prefix):
    """Never reply on a wildcard, a $ topic, or a protocol topic other than P/replies/..."""
    if "+" in topic or "#" in topic or topic.startswith("$"):
        return True
    return topic.startswith(prefix + "/") and not topic.startswith(prefix + "/replies/")


def _guess_id(payload):
    try:
        value = json.loads(payload)
    except (ValueError, UnicodeError):
        return None
    return value.get("id") if isinstance(value, dict) and valid_id(value.get("id")) else None
