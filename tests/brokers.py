"""Real brokers for the test suite.

`MosquittoProcess` runs a private Mosquitto built from the repository's shipped
`mosquitto.conf`: only the listener port (a free one, bound to 127.0.0.1), the file paths
(persistence, pid, log: all inside a per-test directory) and, under root, the user change, so
the tests exercise the configuration users deploy. The system broker on port 1883 is never
touched.

`wait_until` is the one polling helper: tests wait on events or on it, never on a bare sleep.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar

__all__ = [
    "SHIPPED_CONF",
    "MosquittoError",
    "MosquittoProcess",
    "build_config",
    "count_listeners",
    "find_mosquitto",
    "free_port",
    "wait_until",
]

T = TypeVar("T")

SHIPPED_CONF = Path(__file__).resolve().parent.parent / "mosquitto.conf"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
LOOPBACK = "127.0.0.1"

_EXTRA_SEARCH_DIRS = ("/usr/sbin", "/usr/local/sbin")
# Shipped directives that name ports, system paths or the system user: the helper drops them and
# supplies its own (listeners are rewritten in place instead).
_DROPPED = frozenset({"bind_address", "include_dir", "log_dest", "persistence_location", "pid_file", "user"})
_LISTENER_KEYS = frozenset({"listener", "port"})
# Logged (at level "information") once every listener is bound.
_RUNNING_LINE = re.compile(rb"mosquitto version \S+ running")
# Directives a config may repeat: extra lines with these keys are appended, never substituted.
_REPEATABLE = frozenset({"address", "connection", "listener", "log_type", "plugin", "protocol", "topic"})


class MosquittoError(RuntimeError):
    """Mosquitto could not be found, started or stopped; the message carries its log."""


def find_mosquitto() -> str | None:
    """The mosquitto executable: on PATH, else in the sbin directories distributions use."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for directory in _EXTRA_SEARCH_DIRS:
        candidate = Path(directory) / "mosquitto"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port the OS just reported free on `host` (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.01,
    message: str = "",
) -> T:
    """Poll `predicate` until it returns something truthy, and return that.

    Raises AssertionError (with `message`) if the deadline passes first.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(message or f"condition not met within {timeout} s: {predicate!r}")
        time.sleep(interval)


def _directive(line: str) -> str | None:
    """The directive a config line sets, or None for blank lines and comments."""
    words = line.split()
    if not words or words[0].startswith("#"):
        return None
    return words[0]


def count_listeners(conf_text: str) -> int:
    """How many listeners a config defines (Mosquitto always has at least the default one)."""
    keys = (_directive(line) for line in conf_text.splitlines())
    return max(1, sum(key in _LISTENER_KEYS for key in keys))


def _override_map(extra_conf: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """Split extra lines into substitutions (keyed by directive) and lines to append."""
    substitute: dict[str, str] = {}
    append: list[str] = []
    for line in extra_conf:
        key = _directive(line)
        if key in _DROPPED:
            raise ValueError(f"{key!r} is managed by MosquittoProcess; it cannot be overridden")
        if key is None or key in _REPEATABLE or key in substitute:
            append.append(line)
        else:
            substitute[key] = line
    return substitute, append


def _managed_lines(conf_lines: Sequence[str], workdir: Path) -> list[str]:
    lines = [
        f"persistence_location {workdir / 'data'}/",
        f"pid_file {workdir / 'mosquitto.pid'}",
        # stderr is redirected to <workdir>/mosquitto.log together with start-up errors.
        "log_dest stderr",
    ]
    log_types = {line.split()[1] for line in conf_lines if _directive(line) == "log_type"}
    if log_types and not log_types & {"information", "all"}:
        # start() waits for the "running" line, logged at this level. (No log_type at all
        # means Mosquitto's defaults, which include it; adding one would replace them.)
        lines.append("log_type information")
    if os.geteuid() == 0:
        # As root Mosquitto switches to the `mosquitto` user, which cannot write the test's
        # directory; stay root instead (the warning it prints about that is expected).
        lines.append("user root")
    return lines


def build_config(
    conf_text: str,
    *,
    ports: Sequence[int],
    workdir: Path,
    extra_conf: Iterable[str] = (),
) -> str:
    """The shipped config with listeners moved to `ports` and file paths moved into `workdir`.

    Listener N becomes `listener ports[N] 127.0.0.1`. An extra line replaces the shipped line
    setting the same directive in place (keeping its position, which matters for per-listener
    options); extra lines for repeatable directives, or for directives the shipped config
    lacks, are appended.
    """
    substitute, append = _override_map(extra_conf)
    free_ports = iter(ports)
    out: list[str] = []
    for line in conf_text.splitlines():
        key = _directive(line)
        if key in _LISTENER_KEYS:
            out.append(f"listener {next(free_ports)} {LOOPBACK}")
        elif key in _DROPPED:
            out.append(f"# (replaced by tests/brokers.py) {line}")
        elif key in substitute:
            out.append(substitute.pop(key))
        else:
            out.append(line)
    out.append("")
    out.append("# ---- added by tests/brokers.py ----")
    out.extend(f"listener {port} {LOOPBACK}" for port in free_ports)  # config had no listener
    out.extend(_managed_lines([*out, *append], workdir))
    out.extend(substitute.values())
    out.extend(append)
    return "\n".join(out) + "\n"


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


class MosquittoProcess:
    """A private Mosquitto from the shipped config, on free ports, files under `workdir`.

    `stop()` is a clean SIGTERM (Mosquitto saves its persistence file), `kill()` a crash;
    `start()` after either, or `restart()`, reuses the same port and persistence directory.
    Without `workdir` a temporary directory is made and removed on `close()` / exit.
    """

    def __init__(
        self,
        workdir: Path | str | None = None,
        *,
        extra_conf: Iterable[str] = (),
        conf_path: Path | str = SHIPPED_CONF,
        executable: str | None = None,
    ) -> None:
        self.executable = executable or find_mosquitto()
        if self.executable is None:
            raise MosquittoError("mosquitto executable not found on PATH or in /usr/sbin")
        self._owns_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="mqtt-tasks-mosquitto-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "data").mkdir(exist_ok=True)
        self.conf_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self.extra_conf = list(extra_conf)
        self._source = Path(conf_path).read_text(encoding="utf-8")
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_before = False
        self._log_offset = 0
        self._assign_ports()

    # -- addresses ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The first listener's port: the plain MQTT one in the shipped config."""
        return self.ports[0]

    @property
    def url(self) -> str:
        return f"mqtt://{LOOPBACK}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def log_text(self) -> str:
        """Everything Mosquitto wrote, over every start."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> MosquittoProcess:
        """Spawn Mosquitto and return once its port accepts TCP connections (10 s at most)."""
        if self.running:
            raise MosquittoError(f"mosquitto on port {self.port} is already running")
        failure = self._spawn_and_wait()
        for _retry in range(2):
            if failure is None or not self._lost_port_race():
                break
            self._assign_ports()  # another process took the free port first: pick new ones
            failure = self._spawn_and_wait()
        if failure is not None:
            raise MosquittoError(self._describe_failure(failure))
        self._started_before = True
        return self

    def stop(self) -> None:
        """SIGTERM and wait: a clean shutdown, during which Mosquitto saves its persistence."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL and wait: a crash; nothing is saved since the last autosave."""
        self._end(signal.SIGKILL)

    def restart(self) -> MosquittoProcess:
        """Clean stop, then start on the same port with the same persistence directory."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop, and remove the working directory if this object created it."""
        self.stop()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> MosquittoProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<MosquittoProcess {self.url} {state} workdir={self.workdir}>"

    # -- internals ------------------------------------------------------------------------

    def _assign_ports(self) -> None:
        self.ports = [free_port() for _ in range(count_listeners(self._source))]
        text = build_config(self._source, ports=self.ports, workdir=self.workdir, extra_conf=self.extra_conf)
        self.conf_path.write_text(text, encoding="utf-8")

    def _spawn_and_wait(self) -> str | None:
        """Spawn; None once the port accepts connections, else why it never did."""
        assert self.executable is not None
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [self.executable, "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        return self._wait_ready()

    def _lost_port_race(self) -> bool:
        """Whether the last start failed only because its never-used port was taken."""
        latest = self._log_since_spawn()
        return not self._started_before and b"Address already in use" in latest

    def _wait_ready(self) -> str | None:
        """None once this process is serving its port, else why it never did.

        A TCP connect alone is not proof: if another process took the port between
        free_port() and the bind, the connect reaches that process while ours exits with
        "Address already in use". Mosquitto logs "... running" only after every listener is
        bound, so wait for that line from this spawn, then for the port.
        """
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                return f"exited with code {code}"
            if self._logged_running() and _accepts_connections(self.port):
                return None
            time.sleep(0.01)
        self.kill()
        return f"did not log 'running' and accept connections on port {self.port} within {START_TIMEOUT_S} s"

    def _log_since_spawn(self) -> bytes:
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                return log.read()
        except FileNotFoundError:
            return b""

    def _logged_running(self) -> bool:
        return _RUNNING_LINE.search(self._log_since_spawn()) is not None

    def _describe_failure(self, failure: str) -> str:
        return (
            f"mosquitto {failure}\n"
            f"command: {self.executable} -c {self.conf_path}\n"
            f"--- log ({self.log_path}) ---\n{self.log_text()[-6000:]}"
        )

    def _end(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            if proc is not None:
                proc.wait()
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise MosquittoError(
                f"mosquitto ignored {sig.name} for {STOP_TIMEOUT_S} s and was killed\n{self.log_text()[-3000:]}"
            ) from None
