"""The background process that keeps `maas` commands fast, like a build daemon: one per folder, in `.maas/daemon/`.

A command in a fresh Python process pays for its imports (Prefect, pandas, pyarrow, s3fs, onnxruntime,
matplotlib: seconds on 2 cores) and, unless a Prefect server is configured, for starting Prefect's temporary
API (10-20 s). The first command that runs a flow here starts this process; it stays until it has been idle
for `MAAS_DAEMON_IDLE_SECONDS` (default 30 minutes) or `maas down` stops it, and gives later commands:

- a Prefect server (SQLite under `.maas/daemon/prefect`, 127.0.0.1, a free port), started when a command
  first needs one and stopped with the daemon. Commands use it only when no Prefect API is configured
  (PREFECT_API_URL, the active profile) and no `maas up` stack runs in the folder.
- a warm process (a "zygote") with those libraries imported: the `maas` command line hands it its
  arguments, working folder, environment, umask and its stdin/stdout/stderr (over the Unix socket
  `.maas/daemon/maas.sock`, with `socket.send_fds`); it forks one child per command, which runs the same
  click command as the plain path would and exits with its exit code, which the command line exits with.
  Signals sent to the command line (Ctrl-C, SIGTERM) are passed on to the child.

`MAAS_DAEMON=0` (or `maas --no-daemon ...`) runs every command in its own process, as before; the tests
set it. A socket or state file left by a daemon that died is harmless: the daemon holds a lock on
`.maas/daemon/lock` for its lifetime, so a refused connection means no daemon, and the next command
starts one. A daemon started from other code (an upgrade, another PYTHONPATH) serves no commands: the
command line sees a different code key, asks the old one to retire once its commands end, and starts
a new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

STACK_STATE = ".maas/stack/stack.json"  # `maas up`'s: with a stack running, its server is the one commands use
HOME = Path(".maas/daemon")  # relative to the folder the command runs in, as `maas up`'s .maas/stack
SOCKET = HOME / "maas.sock"  # relative on purpose: a Unix socket path is limited to ~100 bytes
DISABLE = "MAAS_DAEMON"  # 0/off/false/no: every command runs in its own process
IDLE = "MAAS_DAEMON_IDLE_SECONDS"
IDLE_SECONDS = 1800.0
START_SECONDS = 60.0  # for the daemon's imports before it answers
SERVER_START_SECONDS = 90.0  # as PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, which the CLI sets
STOP_SECONDS = 10.0
MAX_MESSAGE = 1 << 22
# What the warm process imports once, so that its children do not (torch stays out: the commands that
# train take minutes, and run in their own process).
WARM_IMPORTS = ("maas.flows.score", "maas.flows.evaluate", "maas.modules.engines", "maas.modules.registry",
                "matplotlib.pyplot", "onnxruntime", "s3fs", "prefect.flow_engine", "prefect.task_engine",
                "prefect.engine")  # fmt: skip


class DaemonUnavailable(Exception):
    """No daemon could serve this command; it runs in this process instead."""


def enabled(argv: list[str] | None = None) -> bool:
    if os.environ.get(DISABLE, "").strip().lower() in ("0", "off", "false", "no"):
        return False
    if argv is not None and "--no-daemon" in _global_options(argv):
        return False
    return os.name == "posix" and hasattr(socket, "send_fds")


def _global_options(argv: list[str]) -> list[str]:
    options = []
    for arg in argv:
        if not arg.startswith("-"):
            break
        options.append(arg)
    return options


def command_of(argv: list[str]) -> str | None:
    return next((arg for arg in argv if not arg.startswith("-")), None)


def code_key() -> str:
    """What the warm process must share with a command line to run its commands: the interpreter, PYTHONPATH,
    maas's source files and the site-packages folders (an install or an upgrade changes their listing)."""
    import site

    flows = Path(__file__).resolve().parent
    parts = [sys.executable, sys.prefix, os.environ.get("PYTHONPATH", "")]
    for folder in (flows, flows / "cli", flows.parent / "modules"):
        parts += [f"{f}:{f.stat().st_mtime_ns}" for f in sorted(folder.glob("*.py"))]
    for folder in site.getsitepackages():
        with contextlib.suppress(OSError):
            parts.append(f"{folder}:{os.stat(folder).st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def configured_api_url() -> str | None:
    """A Prefect API the user chose: PREFECT_API_URL, else the active profile's (read without importing Prefect)."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    try:
        import tomllib
    except ImportError:  # Python 3.10: no reader at hand; profiles there are not consulted
        return None
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        profiles = tomllib.loads(path.read_text())
    except (OSError, ValueError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active", "ephemeral")
    return profiles.get("profiles", {}).get(active, {}).get("PREFECT_API_URL")


# -- the command line's side ---------------------------------------------------------------------------


def forward(argv: list[str], start: bool) -> int:
    """Run `maas argv` in a child of the warm process; its exit code. `start`: start a daemon if none runs.

    Until the daemon has said which child runs the command, nothing has run: a daemon that retires (other
    code) or goes away (idle, stopped) just now is replaced, and after three tries the caller runs the command.
    """
    key = code_key()
    server = configured_api_url() is None and not Path(STACK_STATE).exists()
    for _ in range(3):
        conn = connect(start, server)
        try:
            _send(conn, {"op": "run", "key": key, "argv": argv, "cwd": os.getcwd(), "env": dict(os.environ),
                         "umask": _umask()}, fds=[0, 1, 2])  # fmt: skip
            replies = _lines(conn)
            first = next(replies, None)
        except OSError:
            first = None
        if first is None or first.get("stale"):
            conn.close()
            start = True  # a stale daemon retires once its commands end; one for this code takes its place
            continue
        with conn:
            return _relay(first["pid"], replies)
    raise DaemonUnavailable("no daemon took the command")


def server(start: bool) -> tuple[str, int | None] | None:
    """The address and process id of the daemon's Prefect server, which it starts if need be (it may take
    tens of seconds to answer: `healthy` waits for it)."""
    try:
        conn = connect(start, server=True)
    except DaemonUnavailable:
        return None
    with conn:
        _send(conn, {"op": "server"})
        reply = next(_lines(conn), None)
    return (reply["api_url"], reply.get("pid")) if reply and reply.get("api_url") else None


def asks_help(argv: list[str]) -> bool:
    return "--help" in argv or "-h" in argv


def connect(start: bool, server: bool = False) -> socket.socket:
    """A connection to the daemon of this folder; with `start`, one is started (and awaited) if none answers,
    with its Prefect server starting at once when `server`."""
    try:
        return _connect()
    except OSError:
        if not start:
            raise DaemonUnavailable("no daemon runs here") from None
    process = _spawn(server)
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        try:
            return _connect()
        except OSError:
            if process.poll() not in (None, 0):
                raise DaemonUnavailable(f"the daemon exited while starting; see {HOME / 'daemon.log'}") from None
            time.sleep(0.05)
    raise DaemonUnavailable(f"the daemon did not answer within {START_SECONDS:.0f} s; see {HOME / 'daemon.log'}")


def stop() -> bool:
    """Stop this folder's daemon (its commands in flight and its Prefect server too); whether one ran."""
    try:
        conn = _connect()
    except OSError:
        return _stop_by_pid()
    pid = _recorded().get("pid")
    with conn:
        _send(conn, {"op": "stop"})
        conn.settimeout(STOP_SECONDS * 3)
        with contextlib.suppress(OSError):
            for _ in _lines(conn):  # until it closes the connection, on its way out
                pass
    deadline = time.monotonic() + STOP_SECONDS
    while pid and _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def _stop_by_pid() -> bool:
    """A daemon that no longer answers on its socket, still alive as recorded in daemon.json."""
    from maas.flows.stack import ProcessIdentity, still_running

    state = _recorded()
    stopped = False
    for name in ("", "server_"):
        pid, recorded = state.get(f"{name}pid"), state.get(f"{name}identity")
        if pid and recorded and still_running(pid, ProcessIdentity.model_validate(recorded)):
            _signal_group(pid, signal.SIGTERM)
            stopped = True
    with contextlib.suppress(OSError):
        (HOME / "daemon.json").unlink()
    return stopped


def _recorded() -> dict:
    try:
        return json.loads((HOME / "daemon.json").read_text())
    except (OSError, ValueError):
        return {}


def _connect() -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(SOCKET))
    except OSError:
        conn.close()
        raise
    return conn


def _spawn(server: bool) -> subprocess.Popen:
    HOME.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "maas.flows.daemon", *(["--server"] if server else [])]
    with open(HOME / "daemon.log", "ab") as log:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip


def _relay(pid: int, replies: Iterator[dict]) -> int:
    """Pass this process's signals on to the child (and its own children) until its exit status arrives."""
    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
    for sig in forwarded:
        signal.signal(sig, lambda number, _frame: _signal_group(pid, number))
    status = next(replies, None)
    if status is None:
        raise SystemExit(f"error: the daemon ended before the command did; see {HOME / 'daemon.log'}")
    if status["signal"]:  # die of the same signal, as the command would have
        signal.signal(status["signal"], signal.SIG_DFL)
        os.kill(os.getpid(), status["signal"])
    return status["exit"]


def _signal_group(pid: int, number: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, number)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def healthy(api_url: str, pid: int | None, timeout: float = SERVER_START_SECONDS) -> bool:
    """Whether the server at `api_url` answers within `timeout` (False at once if its process `pid` ended)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as reply:
                if json.loads(reply.read()) is True:
                    return True
        except (OSError, ValueError):
            pass
        if pid and not _running(pid):
            return False
        time.sleep(0.2)
    return False


def _running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# -- the wire: one JSON object per line; the first message may carry file descriptors --------------------


def _send(conn: socket.socket, message: dict, fds: list[int] = ()) -> None:
    data = json.dumps(message).encode() + b"\n"
    if fds:
        sent = socket.send_fds(conn, [data], list(fds))
        conn.sendall(data[sent:])
    else:
        conn.sendall(data)


def _lines(conn: socket.socket) -> Iterator[dict]:
    buffer = b""
    while True:
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield json.loads(line)
        chunk = conn.recv(65536)
        if not chunk:
            return
        buffer += chunk


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, MAX_MESSAGE, 8)
    while not data.endswith(b"\n"):
        chunk = conn.recv(MAX_MESSAGE)
        if not chunk or len(data) > MAX_MESSAGE:
            raise ValueError("incomplete request")
        data += chunk
    return json.loads(data), fds


# -- the daemon's side ----------------------------------------------------------------------------------


class Daemon:
    """Serves one folder: forks a child per command, owns the Prefect server, exits when idle or told to."""

    def __init__(self, listener: socket.socket, lock_fd: int, key: str, idle_seconds: float) -> None:
        self.listener, self.lock_fd, self.key, self.idle_seconds = listener, lock_fd, key, idle_seconds
        self.home = HOME.resolve()
        self.socket_inode = SOCKET.stat().st_ino
        self.children: dict[int, socket.socket] = {}  # pid -> its command line's connection
        self.server: subprocess.Popen | None = None
        self.api_url: str | None = None
        self.last_active = time.monotonic()
        self.stopping = self.retiring = False
        self.stop_deadline = 0.0
        self.waiting_stop: list[socket.socket] = []
        self.selector = selectors.DefaultSelector()
        self.wake_read, self.wake_write = os.pipe()

    def serve(self) -> str:
        """Serve until stopped, retired or idle; which of them."""
        self.last_active = time.monotonic()  # idle from now, not from before the imports
        os.set_blocking(self.wake_write, False)
        signal.set_wakeup_fd(self.wake_write)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a child's exit wakes the selector through the pipe
        signal.signal(signal.SIGTERM, lambda *_: self._stop())
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.selector.register(self.wake_read, selectors.EVENT_READ)
        while True:
            self._reap()
            if self.stopping and not self.children:
                reason = "stopped"
                break
            if self.retiring and not self.children:
                reason = "retired: a command of other code (maas or its packages changed) came"
                break
            if not self.children and time.monotonic() - self.last_active > self.idle_seconds:
                reason = f"idle for {self.idle_seconds:.0f} s"
                break
            timeout = 0.5 if self.stopping else min(60.0, self.idle_seconds)
            for ready, _ in self.selector.select(timeout=timeout):
                if ready.fileobj is self.listener and not (self.stopping or self.retiring):
                    self._accept()
                elif ready.fileobj == self.wake_read:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake_read, 4096)
        self._stop_server()
        return reason

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        self.last_active = time.monotonic()
        conn.settimeout(10)
        try:
            request, fds = _receive(conn)
        except (OSError, ValueError):
            conn.close()
            return
        op = request.get("op")
        if op == "run" and request.get("key") == self.key:
            self._fork(conn, request, fds)
        elif op == "run":
            self._retire()
            _send(conn, {"stale": True})
        elif op == "server":
            self.start_server()
            _send(conn, {"api_url": self.api_url, "pid": self.server.pid if self.server else None})
        elif op == "stop":
            self._stop()
            self.waiting_stop.append(conn)  # closed when this process exits: `maas down` waits for that
        for fd in fds:
            os.close(fd)
        if op != "stop" and conn not in self.children.values():
            conn.close()

    def _stop(self) -> None:
        self.stopping = True
        self.stop_deadline = time.monotonic() + STOP_SECONDS
        for pid in self.children:
            _signal_group(pid, signal.SIGTERM)

    def _retire(self) -> None:
        """Code changed under this daemon: take no more commands; a new daemon takes the socket and the lock."""
        self.retiring = True
        self.selector.unregister(self.listener)
        self.listener.close()
        _remove_if_ours(SOCKET, self.socket_inode)
        os.close(self.lock_fd)

    def _fork(self, conn: socket.socket, request: dict, fds: list[int]) -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                self.selector.close()
                for fd in (self.wake_read, self.wake_write, self.lock_fd):
                    with contextlib.suppress(OSError):
                        os.close(fd)
                for inherited in (self.listener, conn, *self.children.values(), *self.waiting_stop):
                    inherited.close()  # other commands' connections: theirs to close, not this child's
                code = _child(request, fds)
            finally:
                os._exit(code)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)  # also done by the child: whichever runs first, the command line can signal it
        _send(conn, {"pid": pid})
        self.children[pid] = conn

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            self.last_active = time.monotonic()
            if self.server is not None and pid == self.server.pid:
                self.server.returncode = os.waitstatus_to_exitcode(status)
                continue
            conn = self.children.pop(pid, None)
            if conn is None:
                continue
            killed = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
            with contextlib.suppress(OSError):
                _send(conn, {"exit": 1 if killed else os.waitstatus_to_exitcode(status), "signal": killed})
            conn.close()
        if self.stopping and self.children and time.monotonic() > self.stop_deadline:
            for pid in self.children:
                _signal_group(pid, signal.SIGKILL)

    def start_server(self) -> None:
        if self.server is not None and self.server.returncode is None:
            return
        import shutil

        port = _free_port()
        self.api_url = f"http://127.0.0.1:{port}/api"
        prefect = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"
        env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_PROFILE")}
        env.update(PREFECT_HOME=str(self.home / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
        with open(self.home / "server.log", "ab") as log:
            self.server = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                           env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True)  # fmt: skip
        self.write_state()

    def _stop_server(self) -> None:
        if self.server is None or self.server.returncode is not None:
            return
        _signal_group(self.server.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        while time.monotonic() < deadline:
            if os.waitpid(self.server.pid, os.WNOHANG)[0]:
                return
            time.sleep(0.1)
        _signal_group(self.server.pid, signal.SIGKILL)
        os.waitpid(self.server.pid, 0)

    def write_state(self) -> None:
        """daemon.json: for people (the server's address) and for `maas down` when the socket no longer answers."""
        from maas.flows.stack import identity

        server = self.server.pid if self.server else None
        found = identity(server) if server else None
        state = {"pid": os.getpid(), "identity": identity(os.getpid()).model_dump(), "key": self.key,
                 "api_url": self.api_url, "server_pid": server,
                 "server_identity": found and found.model_dump()}  # fmt: skip
        path = self.home / "daemon.json"
        path.with_suffix(".tmp").write_text(json.dumps(state, indent=2))
        path.with_suffix(".tmp").replace(path)


def _child(request: dict, fds: list[int]) -> int:
    """In the forked child: become the command line's process (fds, folder, environment) and run the command."""
    import atexit
    import threading

    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.setpgid(0, 0)  # a group of its own: the command line signals it and whatever it starts
    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
    encoding, errors = sys.stdout.encoding, sys.stdout.errors
    sys.stdin = open(0, closefd=False, encoding=encoding)  # noqa: SIM115
    sys.stdout = open(1, "w", closefd=False, encoding=encoding, errors=errors, buffering=1 if os.isatty(1) else -1)  # noqa: SIM115
    sys.stderr = open(2, "w", closefd=False, encoding=encoding, errors="backslashreplace", buffering=1)  # noqa: SIM115
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.umask(request["umask"])
    sys.argv = ["maas", *request["argv"]]
    code = 0
    try:
        _refresh_prefect()
        from maas.flows.cli import app

        app.main(request["argv"], prog_name="maas")
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
        code = 1 if isinstance(exc.code, str) else (exc.code or 0)
    except BaseException:  # noqa: BLE001 (as an uncaught exception would: traceback, exit 1)
        import traceback

        traceback.print_exc()
        code = 1
    threading._shutdown()  # what the interpreter does at exit: wait for threads, then run the atexit
    atexit._run_exitfuncs()  # functions (Prefect sends its last logs and events)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    return code


def _refresh_prefect() -> None:
    """Prefect read its settings and set up logging when the warm process imported it; read them again
    from this command's environment, with its own stderr."""
    from prefect.context import refresh_global_settings_context
    from prefect.logging.configuration import setup_logging

    refresh_global_settings_context()
    setup_logging(incremental=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _remove_if_ours(path: Path, inode: int) -> None:
    with contextlib.suppress(OSError):
        if path.stat().st_ino == inode:
            path.unlink()


def main() -> None:
    """`python -m maas.flows.daemon [--server]`, started by the first command that runs a flow in this folder."""
    import fcntl
    import importlib

    HOME.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(HOME / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # another daemon serves this folder (or is starting): commands connect to it
    with contextlib.suppress(FileNotFoundError):
        SOCKET.unlink()  # left by a daemon that died: the lock says none runs
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(SOCKET))
    listener.listen(64)
    daemon = Daemon(listener, lock_fd, code_key(), float(os.environ.get(IDLE) or IDLE_SECONDS))
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} daemon {os.getpid()} serving {daemon.home}", flush=True)
    if "--server" in sys.argv[1:]:
        daemon.start_server()  # while the imports below run
    else:
        daemon.write_state()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    import matplotlib

    matplotlib.use("Agg")
    for name in WARM_IMPORTS:
        importlib.import_module(name)
    reason = "failed"
    try:
        reason = daemon.serve()
    finally:
        _remove_if_ours(SOCKET, daemon.socket_inode)
        state = HOME / "daemon.json"
        with contextlib.suppress(OSError, ValueError, KeyError):
            if json.loads(state.read_text())["pid"] == os.getpid():
                state.unlink()
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} daemon {os.getpid()} ends ({reason})", flush=True)


if __name__ == "__main__":
    main()
