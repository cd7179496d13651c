"""Broker nodes of the tests' own, and how a test session finds a broker to talk to.

`RedisNode`, `RabbitNode` and `NatsNode` each run one broker process from the installed
binary, on free ports of 127.0.0.1 and in a temp dir of their own, so that a test may kill,
pause, restart or starve it without touching anybody else's broker. Every node is stopped
by its pid (its process group), never by name.

`find_broker` is what the session fixtures in tests/conftest.py use: the broker an
environment variable names, else the shared one on its default port when something listens
there, else a node of the session's own, else a skip that says which program is missing.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

RABBITMQ_BIN = Path(os.environ.get("MM_TEST_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))
NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def free_port() -> int:
    """A free port below Linux's ephemeral range (32768+), so that no outgoing connection
    takes it between a node's stop and its restart on the same port."""
    while True:
        port = random.randrange(20000, 32000)
        if port in (25672, 25673):  # a shared RabbitMQ's distribution ports
            continue
        with contextlib.suppress(OSError), socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
            return port


def listening(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on host:port."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout):
        return True
    return False


def reachable(url: str, default_port: int) -> bool:
    """Whether the host and port of `url` accept connections."""
    parts = urlsplit(url)
    return listening(parts.port or default_port, parts.hostname or "127.0.0.1")


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key, made with openssl."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    if not cert.exists():
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    return cert, key


class Node:
    """One broker process of our own: start, stop, kill -9, restart on the same port,
    pause (SIGSTOP) and resume (SIGCONT). A context manager that always stops it."""

    kind = "broker"
    boot_timeout = 20.0

    def __init__(self, base: Path | None = None) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"mm-{self.kind}-", dir=base))
        self.process: subprocess.Popen[bytes] | None = None

    # --- what each broker says ------------------------------------------------------------

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        return None

    def ports(self) -> list[int]:
        """The ports that must accept connections before the node counts as up."""
        return [self.port]

    def shut_down(self, process: subprocess.Popen[bytes]) -> None:
        """Ask the running process to stop; `stop` kills it if it has not after a while."""
        os.killpg(process.pid, signal.SIGTERM)

    # --- the life cycle --------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> Self:
        """Start the process and wait until it accepts connections."""
        assert not self.running, f"the {self.kind} node is already running"
        with open(self.dir / "server.out", "ab") as out:  # the child keeps its own copy
            self.process = subprocess.Popen(
                self.command(),
                env=self.environment(),
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: signals reach its children
            )
        self.wait_listening()
        return self

    def wait_listening(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.boot_timeout)
        while not all(listening(port, timeout=0.2) for port in self.ports()):
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"the test's {self.kind} node exited: {self.output()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the test's {self.kind} node did not start: {self.output()}")
            time.sleep(0.02)

    def output(self, tail: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "server.out").read_text(errors="replace")[-tail:]
        return ""

    def stop(self, timeout: float = 30) -> None:
        """Stop it gracefully (then by force), by its pid; nothing when it is not running."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            self._signal(process, signal.SIGCONT)  # a paused node can't stop
            with contextlib.suppress(Exception):
                self.shut_down(process)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
        self._signal(process, signal.SIGKILL)  # and whatever it left in its group
        process.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would: no goodbye to its clients, nothing saved."""
        process, self.process = self.process, None
        if process is not None:
            self._signal(process, signal.SIGKILL)
            process.wait()

    def restart(self) -> None:
        """Stop and start again on the same port(s)."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the process holds its connections open and answers nothing."""
        assert self.process is not None
        self._signal(self.process, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after `pause`."""
        assert self.process is not None
        self._signal(self.process, signal.SIGCONT)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def close(self) -> None:
        """Stop it and remove its directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @staticmethod
    def _signal(process: subprocess.Popen[bytes], number: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, number)


# --- Redis --------------------------------------------------------------------------------------


class RedisNode(Node):
    """redis-server, no persistence; `tls=True` listens for rediss:// only."""

    kind = "redis"

    def __init__(self, *args: str, tls: bool = False, base: Path | None = None) -> None:
        super().__init__(base)
        self.args = list(args)
        self.tls = tls

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        ports = ["--port", str(self.port)]
        if self.tls:
            cert, key = self_signed_certificate(self.dir)
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert),
                     "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
                     "--tls-auth-clients", "no"]  # fmt: skip
        return ["redis-server", *ports, "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.dir), *self.args]  # fmt: skip

    def call(self, *args: object) -> Any:
        """One command on a short-lived connection (the node's default user)."""
        import redis  # only the Redis tests need it

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10)
        try:
            return client.execute_command(*args)
        finally:
            client.close()

    @contextlib.contextmanager
    def refuse_writes(self, how: str = "readonly") -> Iterator[None]:
        """While inside, every write fails: "readonly" demotes the node to a replica of a
        master nobody runs (READONLY errors; blocked pops are woken with an error), "oom"
        sets maxmemory to 1 byte with noeviction (OOM errors)."""
        if how == "readonly":
            self.call("REPLICAOF", "127.0.0.1", str(free_port()))
            try:
                yield
            finally:
                self.call("REPLICAOF", "NO", "ONE")
        elif how == "oom":
            self.call("CONFIG", "SET", "maxmemory-policy", "noeviction")
            self.call("CONFIG", "SET", "maxmemory", "1")
            try:
                yield
            finally:
                self.call("CONFIG", "SET", "maxmemory", "0")
        else:
            raise ValueError(f"refuse_writes: how must be 'readonly' or 'oom', not {how!r}")


class RedisCluster:
    """A Redis Cluster of our own: `masters` masters, each with `replicas` replicas, every
    node a `RedisNode` (own port and dir, ``--cluster-enabled yes``), made with
    ``redis-cli --cluster create`` and stopped by pid. A context manager."""

    def __init__(self, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1000) -> None:
        self.masters, self.replicas = masters, replicas
        self.base = Path(tempfile.mkdtemp(prefix="mm-redis-cluster-"))
        args = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms))  # fmt: skip
        self.nodes = [RedisNode(*args, base=self.base) for _ in range(masters * (1 + replicas))]
        for node in self.nodes:
            node.port = self._free_port()

    @staticmethod
    def _free_port() -> int:
        """A free port whose cluster bus port (+10000) is free and below Linux's ephemeral
        range too."""
        while True:
            port = free_port()
            if port + 10000 < 32768:
                with contextlib.suppress(OSError), socket.socket() as sock:
                    sock.bind(("127.0.0.1", port + 10000))
                    return port

    @property
    def url(self) -> str:
        """A redis+cluster:// URL naming every node."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def start(self) -> Self:
        """Start the nodes, join them into a cluster, wait until every slot is served."""
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas",
             str(self.replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 60) -> None:
        """Until every running node says the cluster is ok, and each master has a replica
        in sync (`replicas` > 0) among the running nodes.

        About 9 s here after the create, most of it for the first node to hear of every
        replica by gossip; 30 s once ran out in CI while the machine was busy."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._healthy():
                    return
            except Exception:  # a node still joining
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the test's Redis Cluster did not become healthy in {timeout:g} s: "
                    + "; ".join(self._describe(node) for node in self.nodes)
                )
            time.sleep(0.1)

    @staticmethod
    def _describe(node: RedisNode) -> str:
        """What a node says of its state, for a cluster that did not come up."""
        if not node.running:
            return f"{node.port}: not running"
        try:
            state = node.call("CLUSTER", "INFO").split(b"\r\n")[0].decode()
            info = node.call("INFO", "replication")
            return f"{node.port}: {state}, {info['role']}, link {info.get('master_link_status')}"
        except Exception as exc:
            return f"{node.port}: {exc!r}"

    def _healthy(self) -> bool:
        running = [node for node in self.nodes if node.running]
        if not all(b"cluster_state:ok" in node.call("CLUSTER", "INFO") for node in running):
            return False
        if self.replicas == 0:
            return True
        for node in running:
            info = node.call("INFO", "replication")
            if info["role"] == "slave" and info.get("master_link_status") != "up":
                return False
        slots = running[0].call("CLUSTER", "SLOTS")
        return all(len(served) >= 4 for served in slots)  # start, end, master, a replica

    def running_masters(self) -> list[RedisNode]:
        """The running nodes that are masters now."""
        return [n for n in self.nodes if n.running and n.call("ROLE")[0] == b"master"]

    def master_of(self, key: str) -> RedisNode:
        """The running node that is now the master of `key`'s slot."""
        first = next(node for node in self.nodes if node.running)
        slot = int(first.call("CLUSTER", "KEYSLOT", key))
        for start, end, master, *_ in first.call("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return next(node for node in self.nodes if node.port == int(master[1]))
        raise LookupError(f"no master serves slot {slot}")

    def stop(self) -> None:
        for node in self.nodes:
            node.close()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --- RabbitMQ -----------------------------------------------------------------------------------


class RabbitNode(Node):
    """A RabbitMQ node with its own name, ports (AMQP, distribution, epmd), Erlang cookie,
    data and log dirs, and no plugins; `tls=True` also listens for amqps:// with a
    self-signed certificate (`tls_port`, `cafile`). It takes seconds to boot: share one."""

    kind = "rabbitmq"
    boot_timeout = 180.0

    def __init__(self, *, tls: bool = False, base: Path | None = None) -> None:
        super().__init__(base)
        self.dist_port, self.epmd_port = free_port(), free_port()
        self.name = f"mm-test-{os.getpid()}-{self.port}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        self.tls_port: int | None = None
        self.cafile: Path | None = None
        config = "log.console = false\nloopback_users = none\n"
        if tls:  # also listen for amqps://, without asking for client certificates
            cert, key = self_signed_certificate(self.dir)
            self.tls_port, self.cafile = free_port(), cert
            config += (
                f"listeners.ssl.default = 127.0.0.1:{self.tls_port}\n"
                f"ssl_options.cacertfile = {cert}\nssl_options.certfile = {cert}\n"
                f"ssl_options.keyfile = {key}\nssl_options.verify = verify_none\n"
                "ssl_options.fail_if_no_peer_cert = false\n"
            )
        (self.dir / "rabbitmq.conf").write_text(config)
        (self.dir / "rabbitmq-env.conf").write_text("")
        (self.dir / "enabled_plugins").write_text("[].\n")
        self.epmd: subprocess.Popen[bytes] | None = None
        _RABBIT_NODES[self.port] = self

    def environment(self) -> dict[str, str]:
        base = self.dir
        return {
            **os.environ,
            "HOME": str(base),  # its own Erlang cookie
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(base / "node.pid"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            # An epmd of its own (started below, stopped by pid): none is left behind.
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_EPMD_PORT": str(self.epmd_port),
        }

    def command(self) -> list[str]:
        return [str(RABBITMQ_BIN / "rabbitmq-server")]

    def ports(self) -> list[int]:
        return [port for port in (self.port, self.tls_port) if port is not None]

    def start(self) -> Self:
        if self.epmd is None or self.epmd.poll() is not None:
            epmd = shutil.which("epmd") or "epmd"
            self.epmd = subprocess.Popen(
                [epmd, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            deadline = time.monotonic() + 10
            while not listening(self.epmd_port, timeout=0.2):
                assert time.monotonic() < deadline, "epmd did not start"
                time.sleep(0.02)
        return super().start()

    def shut_down(self, process: subprocess.Popen[bytes]) -> None:
        self.ctl("stop", timeout=60)

    def close(self) -> None:
        super().close()
        _RABBIT_NODES.pop(self.port, None)
        epmd, self.epmd = self.epmd, None
        if epmd is not None:
            self._signal(epmd, signal.SIGKILL)
            epmd.wait()

    def ctl_command(self) -> tuple[list[str], dict[str, str]]:
        """The rabbitmqctl command line that reaches this node, and its environment."""
        return [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.name], self.environment()

    def ctl(self, *args: str, timeout: float = 120) -> str:
        """rabbitmqctl against this node; its output, or RuntimeError."""
        command, env = self.ctl_command()
        result = subprocess.run(
            [*command, *args],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode:
            raise RuntimeError(f"rabbitmqctl {args}: {result.stdout}{result.stderr}")
        return result.stdout

    def stop_app(self) -> None:
        """Stop RabbitMQ in the running node: every connection closes, transient queues go."""
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        self.wait_listening()

    def close_connections(self, reason: str = "closed by the test") -> None:
        """Close every client connection (and so every channel) from the broker's side."""
        self.ctl("close_all_connections", reason)

    def close_channels(self) -> None:
        """End every channel process on the node: each client sees its channels closed by
        the broker (and then its connection, with INTERNAL_ERROR)."""
        self.ctl("eval", "[exit(P, kill) || P <- rabbit_channel:list()].")

    @contextlib.contextmanager
    def memory_alarm(self) -> Iterator[None]:
        """While inside, a memory alarm blocks every publishing connection."""
        self.ctl("set_vm_memory_high_watermark", "0")
        try:
            yield
        finally:
            self.ctl("set_vm_memory_high_watermark", "0.4")


_RABBIT_NODES: dict[int, RabbitNode] = {}


def rabbitmqctl_for(url: str) -> tuple[list[str], dict[str, str] | None]:
    """The rabbitmqctl command (and environment) that reaches the broker of an amqp:// URL:
    a node of ours by its port, else the machine's default node."""
    node = _RABBIT_NODES.get(urlsplit(url).port or 5672)
    if node is not None:
        return node.ctl_command()
    return ["rabbitmqctl"], None


# --- NATS ---------------------------------------------------------------------------------------


class NatsNode(Node):
    """nats-server with JetStream (file store in its dir); `extra` adds arguments (TLS)."""

    kind = "nats"

    def __init__(self, *extra: str, base: Path | None = None) -> None:
        super().__init__(base)
        self.extra = list(extra)
        self.url = f"nats://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        store = self.dir / "jetstream"
        return [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(store),
                *self.extra]  # fmt: skip


class NatsClusterNode(NatsNode):
    """One nats-server of a JetStream cluster of our own, routed to the others (`routes`)."""

    def __init__(self, name: str, base: Path, cluster: str = "mm-test") -> None:
        super().__init__(base=base)
        self.name = name
        self.cluster = cluster
        self.cluster_port = free_port()
        self.routes: list[str] = []

    def command(self) -> list[str]:
        return [
            *super().command(),
            "--server_name", self.name,
            "--cluster_name", self.cluster,
            "--cluster", f"nats://127.0.0.1:{self.cluster_port}",
            "--routes", ",".join(self.routes),
        ]  # fmt: skip


# --- which broker a session talks to -------------------------------------------------------


@dataclass(frozen=True)
class BrokerKind:
    """How the session finds one kind of broker."""

    name: str  # "Redis"
    variable: str  # the environment variable naming a broker to use
    default_url: str  # the shared broker's
    default_port: int
    program: str  # the binary a node of our own runs

    def installed(self) -> bool:
        if self.program == "rabbitmq-server":
            return (RABBITMQ_BIN / "rabbitmq-server").exists() and shutil.which("epmd") is not None
        if self.program == "nats-server":
            return os.path.exists(NATS_SERVER)
        return shutil.which(self.program) is not None

    @property
    def missing(self) -> str:
        """The skip reason when there is no broker and no program to start one."""
        return f"{self.program} not installed and no {self.name} on {self.default_url}"


REDIS = BrokerKind(
    "Redis", "MICROMESSAGING_TEST_REDIS", "redis://127.0.0.1:6379/0", 6379, "redis-server"
)
RABBITMQ = BrokerKind(
    "RabbitMQ", "MICROMESSAGING_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/", 5672,
    "rabbitmq-server",
)  # fmt: skip
NATS = BrokerKind("NATS", "MICROMESSAGING_TEST_NATS", "nats://127.0.0.1:4222", 4222, "nats-server")
KINDS = (REDIS, RABBITMQ, NATS)

OWN = "own"
"""The value of a kind's variable that asks for a node of the session's own even when a
shared broker runs (how to check, with the brokers up, what a fresh machine would do)."""


def find_broker(kind: BrokerKind) -> str | None:
    """The URL of the broker to use, or None when the session must start its own node."""
    named = os.environ.get(kind.variable, "").strip()
    if named == OWN:
        return None
    if named:
        return named
    if reachable(kind.default_url, kind.default_port):
        return kind.default_url
    return None
