"""A real Prosody server, run as a child process for end-to-end tests.

:class:`ProsodyServer` writes its own Lua config, data directory and log file under a directory
it is given, listens on free loopback ports only (c2s, optionally c2s direct TLS; no s2s, no HTTP,
no components), and is started and stopped with bounded waits. Users are registered with
``prosodyctl``.

Prosody is a hard requirement of the end-to-end tests: when it is missing,
:func:`find_prosody` raises :class:`ProsodyError` telling how to install it; nothing is skipped.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

LOOPBACK = "127.0.0.1"
DEFAULT_DOMAIN = "example.test"

INSTALL_HINT = (
    "The end-to-end tests need a real Prosody XMPP server (0.12 or later): "
    "install it with `apt-get install prosody` (Debian/Ubuntu) and make sure `prosody` and "
    "`prosodyctl` are on PATH."
)

#: Start-up is attempted at most this many times, each time on fresh ports, in case another
#: process grabbed a port between our probe and Prosody's bind.
START_ATTEMPTS = 3
#: How often readiness is polled while starting.
POLL_INTERVAL = 0.05

# Prosody 0.12's portmanager logs these (at error level) and carries on running without the port.
_PORT_TAKEN_MARKER = "Failed to open server port"  # someone else listens there: retry elsewhere
_TLS_PORT_FAILED_MARKER = "Error binding encrypted port"  # bad certificate or key: give up


class ProsodyError(RuntimeError):
    """Prosody is missing, would not start, or a prosodyctl command failed."""


@dataclass(frozen=True)
class ProsodyBinaries:
    prosody: Path
    prosodyctl: Path


def find_prosody() -> ProsodyBinaries:
    """Locate ``prosody`` and ``prosodyctl``, or raise :class:`ProsodyError` with an install hint."""
    found = {name: shutil.which(name) for name in ("prosody", "prosodyctl")}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise ProsodyError(f"{' and '.join(missing)} not found on PATH. {INSTALL_HINT}")
    prosody, prosodyctl = found["prosody"], found["prosodyctl"]
    assert prosody is not None
    assert prosodyctl is not None
    return ProsodyBinaries(Path(prosody), Path(prosodyctl))


def free_loopback_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that were free on 127.0.0.1 a moment ago.

    All sockets are held open until every port is chosen, so the ports are distinct.
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((LOOPBACK, 0))
            ports.append(sock.getsockname()[1])
        return ports


def _lua_string(value: str | Path) -> str:
    text = str(value)
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    )
    return f'"{escaped}"'


def _lua_list(values: list[str] | list[int]) -> str:
    items = [_lua_string(v) if isinstance(v, str) else str(v) for v in values]
    return "{ " + "; ".join(items) + " }" if items else "{ }"


def _tail(path: Path, lines: int, max_bytes: int = 64 * 1024) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return f"<{path} does not exist>"
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


class ProsodyServer:
    """One Prosody process, configured from scratch under ``workdir``.

    Typical use::

        with ProsodyServer(tmp_dir, users={"alice": "pw"}) as server:
            connect_to(server.host, server.c2s_port, domain=server.domain)

    Everything Prosody writes lives under ``workdir``: ``prosody.cfg.lua``, ``data/``,
    ``prosody.log`` (debug level: every stanza in and out), ``prosody.pid`` and
    ``prosody.console.log`` (its stdout and stderr, where config errors go).

    By default c2s is plaintext-friendly (``c2s_require_encryption = false``,
    ``allow_unencrypted_plain_auth = true``, no ``mod_tls``). Passing ``certificate`` and
    ``key`` loads ``mod_tls`` (STARTTLS on the c2s port) and opens a c2s direct-TLS port as well;
    ``require_encryption=True`` then makes TLS mandatory. ``extra_global_config`` and
    ``extra_host_config`` are raw Lua appended to the global section and the VirtualHost.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        domain: str = DEFAULT_DOMAIN,
        users: Mapping[str, str] | None = None,
        require_encryption: bool = False,
        certificate: Path | None = None,
        key: Path | None = None,
        modules: tuple[str, ...] = ("roster", "saslauth", "disco", "ping"),
        extra_global_config: str = "",
        extra_host_config: str = "",
        startup_timeout: float = 15.0,
        stop_timeout: float = 10.0,
        command_timeout: float = 30.0,
    ) -> None:
        if (certificate is None) != (key is None):
            raise ValueError("certificate and key go together")
        if require_encryption and certificate is None:
            raise ValueError("require_encryption=True needs a certificate and key")
        self.workdir = Path(workdir)
        self.domain = domain
        self.host = LOOPBACK
        self.require_encryption = require_encryption
        self.certificate = certificate
        self.key = key
        self.modules = modules
        self.extra_global_config = extra_global_config
        self.extra_host_config = extra_host_config
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.command_timeout = command_timeout

        self.config_path = self.workdir / "prosody.cfg.lua"
        self.data_path = self.workdir / "data"
        self.log_path = self.workdir / "prosody.log"
        self.console_log_path = self.workdir / "prosody.console.log"
        self.pid_path = self.workdir / "prosody.pid"
        self.certs_path = self.workdir / "certs"

        #: Users registered so far: name -> password.
        self.users: dict[str, str] = {}
        self._initial_users = dict(users or {})
        self.c2s_port = 0
        #: The c2s direct-TLS port (XEP-0368); only listened on when a certificate is given.
        self.c2s_direct_tls_port = 0
        self._binaries: ProsodyBinaries | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._console: IO[bytes] | None = None

    # -- information ------------------------------------------------------------------------

    @property
    def tls_enabled(self) -> bool:
        return self.certificate is not None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def jid(self, user: str) -> str:
        """The bare JID of ``user`` on this server."""
        return f"{user}@{self.domain}"

    def log_tail(self, lines: int = 80) -> str:
        """The last ``lines`` lines of Prosody's log file."""
        return _tail(self.log_path, lines)

    def describe(self) -> str:
        return (
            f"Prosody for {self.domain} on {self.host}: c2s port {self.c2s_port}, "
            f"direct TLS port {self.c2s_direct_tls_port if self.tls_enabled else '(off)'}; "
            f"config {self.config_path}; log {self.log_path}"
        )

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<ProsodyServer {state}: {self.describe()}>"

    # -- configuration ----------------------------------------------------------------------

    def config_text(self) -> str:
        """The Lua config for the current ports and options."""
        modules = list(self.modules)
        if self.tls_enabled and "tls" not in modules:
            modules.append("tls")
        direct_tls_ports = [self.c2s_direct_tls_port] if self.tls_enabled else []
        lines = [
            "-- Written by tests/support/prosody.py; regenerated on every start.",
            "run_as_root = true",
            "daemonize = false",
            f"pidfile = {_lua_string(self.pid_path)}",
            f"data_path = {_lua_string(self.data_path)}",
            f"log = {{ debug = {_lua_string(self.log_path)} }}",
            f"certificates = {_lua_string(self.certs_path)}",
            f"interfaces = {_lua_list([self.host])}",
            f"local_interfaces = {_lua_list([self.host])}",
            f"c2s_ports = {_lua_list([self.c2s_port])}",
            f"c2s_direct_tls_ports = {_lua_list(direct_tls_ports)}",
            "legacy_ssl_ports = { }",
            "s2s_ports = { }",
            "s2s_direct_tls_ports = { }",
            "component_ports = { }",
            "http_ports = { }",
            "https_ports = { }",
            f"modules_enabled = {_lua_list(modules)}",
            f"modules_disabled = {_lua_list(['s2s', 's2s_auth_certs'])}",
            f"c2s_require_encryption = {str(self.require_encryption).lower()}",
            "s2s_require_encryption = false",
            f"allow_unencrypted_plain_auth = {str(not self.require_encryption).lower()}",
            'authentication = "internal_hashed"',
            'storage = "internal"',
        ]
        if self.certificate is not None and self.key is not None:
            lines.append(
                f"ssl = {{ certificate = {_lua_string(self.certificate)}; "
                f"key = {_lua_string(self.key)} }}"
            )
        if self.extra_global_config:
            lines.append(self.extra_global_config)
        lines.append(f"VirtualHost {_lua_string(self.domain)}")
        if self.extra_host_config:
            lines.append(self.extra_host_config)
        return "\n".join(lines) + "\n"

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_path.mkdir(exist_ok=True)
        self.certs_path.mkdir(exist_ok=True)
        self.config_path.write_text(self.config_text(), encoding="utf-8")

    # -- users ------------------------------------------------------------------------------

    def register(self, user: str, password: str) -> None:
        """Create (or reset the password of) ``user`` with ``prosodyctl register``.

        Works whether or not the server is running (internal storage is plain files).
        """
        binaries = self._find_binaries()
        if not self.config_path.exists():
            self._pick_ports()
            self.write_config()
        argv = [
            str(binaries.prosodyctl),
            "--config",
            str(self.config_path),
            "register",
            user,
            self.domain,
            password,
        ]
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self.command_timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ProsodyError(
                f"prosodyctl register {user} {self.domain} did not finish within "
                f"{self.command_timeout} s"
            ) from exc
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode("utf-8", errors="replace").strip()
            raise ProsodyError(
                f"prosodyctl register {user} {self.domain} failed with exit code "
                f"{done.returncode}:\n{output}"
            )
        self.users[user] = password

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Write the config, register the initial users, run Prosody and wait until it listens.

        Raises :class:`ProsodyError` (with the tail of Prosody's log) if it does not come up
        within ``startup_timeout`` seconds.
        """
        if self.is_running():
            raise ProsodyError(f"already running: {self!r}")
        self._find_binaries()
        errors: list[str] = []
        for attempt in range(1, START_ATTEMPTS + 1):
            self._pick_ports()
            self.write_config()
            if attempt == 1:
                for user, password in self._initial_users.items():
                    self.register(user, password)
            try:
                self._launch_and_wait()
            except _PortTaken as exc:
                errors.append(f"attempt {attempt}: {exc}")
                self.stop()
                continue
            except BaseException:
                self.stop()
                raise
            return
        raise ProsodyError(
            f"Prosody could not listen after {START_ATTEMPTS} attempts on fresh ports:\n"
            + "\n".join(errors)
            + f"\n--- tail of {self.log_path} ---\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Terminate Prosody, wait ``stop_timeout`` s, then kill it. Safe to call repeatedly."""
        process, self._process = self._process, None
        atexit.unregister(self.stop)
        try:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=self.stop_timeout)
        finally:
            if self._console is not None:
                self._console.close()
                self._console = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @contextlib.contextmanager
    def running(self) -> Iterator[Self]:
        """Context manager form of :meth:`start` / :meth:`stop`."""
        self.start()
        try:
            yield self
        finally:
            self.stop()

    # -- internals --------------------------------------------------------------------------

    def _find_binaries(self) -> ProsodyBinaries:
        if self._binaries is None:
            self._binaries = find_prosody()
        return self._binaries

    def _pick_ports(self) -> None:
        self.c2s_port, self.c2s_direct_tls_port = free_loopback_ports(2)

    def _launch_and_wait(self) -> None:
        binaries = self._find_binaries()
        # A fresh log per attempt, so that markers found below belong to this process.
        self.log_path.unlink(missing_ok=True)
        self.pid_path.unlink(missing_ok=True)
        self._console = self.console_log_path.open("ab")
        self._process = subprocess.Popen(
            [str(binaries.prosody), "-F", "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._console,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        atexit.register(self.stop)
        ports = [self.c2s_port] + ([self.c2s_direct_tls_port] if self.tls_enabled else [])
        self._wait_until_listening(ports)

    def _wait_until_listening(self, ports: list[int]) -> None:
        process = self._process
        assert process is not None
        deadline = time.monotonic() + self.startup_timeout
        max_polls = int(self.startup_timeout / POLL_INTERVAL) + 1
        for _ in range(max_polls):
            code = process.poll()
            if code is not None:
                raise self._startup_error(f"Prosody exited with code {code} while starting")
            log = self.log_path.read_text("utf-8", "replace") if self.log_path.exists() else ""
            lines = log.splitlines()
            tls_failed = [line for line in lines if _TLS_PORT_FAILED_MARKER in line]
            if tls_failed:
                raise self._startup_error("Prosody could not open its TLS port(s)")
            taken = [line for line in lines if _PORT_TAKEN_MARKER in line]
            if taken:
                raise _PortTaken("; ".join(taken))
            listening = all(
                f"to [{self.host}]:{port}" in log and _accepts(self.host, port) for port in ports
            )
            if listening:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_INTERVAL)
        raise self._startup_error(
            f"Prosody did not listen on {self.host} port(s) {ports} within {self.startup_timeout} s"
        )

    def _startup_error(self, what: str) -> ProsodyError:
        return ProsodyError(
            f"{what}. {self.describe()}\n"
            f"--- tail of {self.log_path} ---\n{self.log_tail()}\n"
            f"--- tail of {self.console_log_path} (stdout/stderr) ---\n"
            f"{_tail(self.console_log_path, 40)}"
        )


class _PortTaken(Exception):
    pass


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def tls_prosody(workdir: Path, users: Mapping[str, str]) -> tuple[ProsodyServer, Path]:
    """A Prosody (not started) that requires TLS, its certificate for ``DEFAULT_DOMAIN`` from a
    throwaway CA; and that CA's certificate (PEM), for whoever must trust the server."""
    import trustme  # a test dependency; only TLS set-ups need it

    workdir.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    leaf = ca.issue_cert(DEFAULT_DOMAIN)
    leaf.cert_chain_pems[0].write_to_path(workdir / "cert.pem")
    leaf.private_key_pem.write_to_path(workdir / "key.pem")
    ca.cert_pem.write_to_path(workdir / "server-ca.pem")
    server = ProsodyServer(
        workdir / "prosody",
        users=users,
        require_encryption=True,
        certificate=workdir / "cert.pem",
        key=workdir / "key.pem",
    )
    return server, workdir / "server-ca.pem"
