"""Fixtures for the black-box integration tests of the `ringlog` broker.

Every test drives a real broker process over TCP on 127.0.0.1 with real Kafka clients
(kcat, confluent-kafka, kafka-python) or raw sockets.

The `broker` fixture is a factory:

    def test_x(broker):
        b = broker(cores=2)                  # started and answering Metadata
        b.bootstrap                          # "127.0.0.1:PORT"
        b.restart()                          # SIGTERM (must exit 0), start again, same data dir
        b.kill9(); b.start()                 # crash, then recover on the same data dir
        b.expect_error(r"some regex")        # an ERROR log line this test provokes on purpose

On teardown every broker the test started gets SIGTERM, 20 s to exit, then SIGKILL. The test
fails (as a teardown error) when a broker exited on its own, did not exit 0 on SIGTERM, or
logged an ` ERROR ` line (or a panic) other than glommio's harmless iopoll-probe line and the
lines the test said it expects. Data dirs are removed afterwards (set RINGLOG_KEEP_DATA=1 to
keep them); the broker's stderr files stay in the test's pytest tmp_path and their paths are
printed with every failure.

Environment:
  RINGLOG_BIN           broker binary (default: target/debug/ringlog under the repo root)
  BROKER_CMD_TEMPLATE   run another Kafka-compatible broker instead (used to validate the tests
                        themselves, e.g. against Tansu); a format string with {host}, {port},
                        {data_dir}, {cores}, split with shlex. Tests that pass ringlog-specific
                        flags are skipped in this mode.
  BROKER_IN_MEMORY=1    the broker keeps nothing across restarts: tests marked `persistence`
                        are skipped, and so is the rest of a test at its Broker.restart()
                        (only meaningful with BROKER_CMD_TEMPLATE).
  RINGLOG_KEEP_DATA=1   keep data dirs after the test.

Every test gets a pytest-timeout of at most 300 s (signal method, so fixture teardown still
runs and kills the broker). Brokers are also started under `setpriv --pdeathsig KILL`, so they
die with the pytest process even if it is SIGKILLed; start brokers from the main thread only
(the death signal follows the thread that forked).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO_ROOT / "target" / "debug" / "ringlog"

TEST_TIMEOUT_S = 300  # per test, the maximum any test may ask for
START_TIMEOUT_S = 30  # until the port accepts and Metadata answers
STOP_TIMEOUT_S = 20  # after SIGTERM, before SIGKILL

# ERROR lines that are known to be harmless: glommio's one-time probe of polled I/O support
# ("got unexpected error when probing iopoll support for file ...").
HARMLESS_ERROR_PATTERNS = [re.compile(r"iopoll")]
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def in_memory_broker() -> bool:
    return os.environ.get("BROKER_IN_MEMORY", "") not in ("", "0", "false")


def template_mode() -> bool:
    return bool(os.environ.get("BROKER_CMD_TEMPLATE"))


# --------------------------------------------------------------------------------------------
# pytest hooks


def _sigterm_to_interrupt(signum, frame):
    # `timeout` (scripts/integration.sh) sends SIGTERM: turn it into KeyboardInterrupt so pytest
    # runs fixture teardown and stops the brokers instead of dying on the spot.
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "persistence: needs a broker that keeps data across restarts "
        "(skipped when BROKER_IN_MEMORY=1)",
    )
    config.addinivalue_line(
        "markers", "ringlog_flags: passes ringlog-only flags (skipped with BROKER_CMD_TEMPLATE)"
    )
    signal.signal(signal.SIGTERM, _sigterm_to_interrupt)


def pytest_collection_modifyitems(config, items):
    for item in items:
        marker = item.get_closest_marker("timeout")
        if marker is None:
            item.add_marker(pytest.mark.timeout(TEST_TIMEOUT_S, method="signal"))
        elif marker.args and marker.args[0] > TEST_TIMEOUT_S:
            raise pytest.UsageError(f"{item.nodeid}: timeout over {TEST_TIMEOUT_S} s")
        if item.get_closest_marker("persistence") and in_memory_broker():
            item.add_marker(pytest.mark.skip(reason="BROKER_IN_MEMORY: broker keeps no data"))
        if item.get_closest_marker("ringlog_flags") and template_mode():
            item.add_marker(pytest.mark.skip(reason="ringlog-only flags; BROKER_CMD_TEMPLATE set"))


# --------------------------------------------------------------------------------------------
# small helpers


def free_port() -> int:
    """A port that was free a moment ago: bind 127.0.0.1:0, read the port, close."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fs_type(path: Path) -> str:
    """File system type of the mount holding `path` (longest mount-point prefix)."""
    path = path.resolve()
    best, best_type = "", "unknown"
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3:
                continue
            mnt = parts[1].replace("\\040", " ")
            if (str(path) == mnt or str(path).startswith(mnt.rstrip("/") + "/")) and len(
                mnt
            ) >= len(best):
                best, best_type = mnt, parts[2]
    return best_type


def data_root() -> Path:
    """$TMPDIR or /tmp, unless it is tmpfs (O_DIRECT fails there): then target/test-tmp."""
    candidates = [os.environ.get("TMPDIR") or "/tmp", str(REPO_ROOT / "target" / "test-tmp")]
    for cand in candidates:
        p = Path(cand)
        p.mkdir(parents=True, exist_ok=True)
        if _fs_type(p) not in ("tmpfs", "ramfs"):
            return p
    raise RuntimeError(f"no disk file system for broker data among {candidates}")


def tail(path: Path, max_lines: int = 60, max_line_chars: int = 400) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    return "\n".join(
        ln if len(ln) <= max_line_chars else ln[:max_line_chars] + " ..."
        for ln in lines[-max_lines:]
    )


class ProtocolError(Exception):
    pass


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ProtocolError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def raw_call(sock: socket.socket, api_key: int, version: int, corr: int, body: bytes) -> bytes:
    """One request with a v1 request header (non-flexible), returns the response body after
    the v0 response header (correlation id checked).

    Request:  int32 size | int16 api_key | int16 api_version | int32 correlation_id
              | string client_id (int16 length + bytes) | body
    Response: int32 size | int32 correlation_id | body
    """
    client_id = b"ringlog-it"
    msg = struct.pack(">hhih", api_key, version, corr, len(client_id)) + client_id + body
    sock.sendall(struct.pack(">i", len(msg)) + msg)
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    data = _recv_exact(sock, size)
    (rcorr,) = struct.unpack_from(">i", data)
    if rcorr != corr:
        raise ProtocolError(f"correlation id {rcorr} != {corr}")
    return data[4:]


def probe_metadata(host: str, port: int, timeout: float = 3.0) -> list[tuple[int, str, int]]:
    """ApiVersions v0, then Metadata (highest of v1..v8 the broker supports) for all topics.
    Returns the brokers [(node_id, host, port)]."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        body = raw_call(s, 18, 0, 1, b"")
        # ApiVersions v0 response: int16 error_code | array(int32 n) of
        #   [int16 api_key | int16 min_version | int16 max_version]
        (err, n) = struct.unpack_from(">hi", body)
        if err != 0:
            raise ProtocolError(f"ApiVersions error {err}")
        ranges = {}
        for i in range(n):
            k, lo, hi = struct.unpack_from(">hhh", body, 6 + 6 * i)
            ranges[k] = (lo, hi)
        if 3 not in ranges:
            raise ProtocolError("broker does not list Metadata (key 3) in ApiVersions")
        lo, hi = ranges[3]
        usable = [v for v in range(1, 9) if lo <= v <= hi]
        if not usable:
            raise ProtocolError(f"no Metadata version in 1..8 within [{lo}, {hi}]")
        v = max(usable)
        # Metadata request v1-v3: topics array, -1 = null = all topics;
        # v4+: + bool allow_auto_topic_creation; v8: + 2 bools (authorized operations).
        req = struct.pack(">i", -1)
        if v >= 4:
            req += b"\x00"
        if v >= 8:
            req += b"\x00\x00"
        body = raw_call(s, 3, v, 2, req)
        # Metadata response v1+: [int32 throttle_time_ms if v >= 3] | brokers array of
        #   [int32 node_id | string host | int32 port | nullable string rack] | ...
        off = 4 if v >= 3 else 0
        (n,) = struct.unpack_from(">i", body, off)
        off += 4
        brokers = []
        for _ in range(n):
            node_id, hlen = struct.unpack_from(">ih", body, off)
            off += 6
            bhost = body[off : off + hlen].decode()
            off += hlen
            (bport, rlen) = struct.unpack_from(">ih", body, off)
            off += 6 + max(rlen, 0)
            brokers.append((node_id, bhost, bport))
        return brokers


# --------------------------------------------------------------------------------------------
# the broker process


class BrokerProblem(AssertionError):
    pass


class Broker:
    """One broker: its port and data dir stay the same across restarts."""

    host = "127.0.0.1"

    def __init__(
        self, name: str, data_dir: Path, log_dir: Path, cores: int, extra_args, expect_errors
    ):
        assert cores in (1, 2), cores
        self.name = name
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.cores = cores
        self.extra_args = [str(a) for a in extra_args]
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.stderr_paths: list[Path] = []
        self._expected = [re.compile(p) for p in expect_errors]
        self.problems: list[str] = []
        # Extra environment for this broker's process (e.g. fault injection).
        self.extra_env: dict[str, str] = {}

    def __repr__(self):
        return f"<Broker {self.name} {self.bootstrap} data={self.data_dir}>"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        template = os.environ.get("BROKER_CMD_TEMPLATE")
        if template:
            if self.extra_args:
                pytest.skip("ringlog-only flags are not passed to BROKER_CMD_TEMPLATE")
            cmd = shlex.split(
                template.format(
                    host=self.host, port=self.port, data_dir=self.data_dir, cores=self.cores
                )
            )
        else:
            binary = Path(os.environ.get("RINGLOG_BIN", str(DEFAULT_BIN)))
            if not binary.is_absolute():
                binary = REPO_ROOT / binary
            if not binary.exists():
                pytest.fail(
                    f"broker binary {binary} missing: "
                    "cargo build -p ringlog-server --bin ringlog (or set RINGLOG_BIN)"
                )
            cmd = [
                str(binary),
                "--data-dir",
                str(self.data_dir),
                "--kafka-addr",
                self.bootstrap,
                "--cores",
                str(self.cores),
                *self.extra_args,
            ]
        if shutil.which("setpriv"):
            # SIGKILL the broker if the pytest process dies (e.g. killed by a global timeout).
            cmd = ["setpriv", "--pdeathsig", "KILL", "--", *cmd]
        return cmd

    # -- lifecycle ------------------------------------------------------------------------

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT_S) -> "Broker":
        self.launch()
        self._wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> "Broker":
        """Waits until a launched broker answers Metadata listing itself."""
        self._wait_ready(timeout)
        return self

    def launch(self) -> "Broker":
        """Starts the process without waiting for it to serve (cluster members wait for each
        other: start them all, then `wait_ready` each)."""
        if self.running():
            raise RuntimeError(f"{self} is already running")
        self.starts += 1
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.log_dir / f"{self.name}-run{self.starts}.stderr"
        self.stderr_paths.append(path)
        env = dict(os.environ)
        env.setdefault("NO_COLOR", "1")  # plain ` ERROR ` in tracing's output
        env.setdefault("RUST_BACKTRACE", "1")
        env.update(self.extra_env)
        with open(path, "wb") as err:
            err.write(f"# {shlex.join(self.command())}\n".encode())
            err.flush()
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                cwd=REPO_ROOT,
                env=env,
                start_new_session=True,  # a Ctrl-C to pytest does not reach the broker
            )
        return self

    def _wait_ready(self, timeout: float):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                self.proc = None
                raise BrokerProblem(
                    f"{self} exited with {rc} during startup; stderr "
                    f"{self.stderr_paths[-1]}:\n{tail(self.stderr_paths[-1])}"
                )
            try:
                brokers = probe_metadata(self.host, self.port)
            except (OSError, ProtocolError, struct.error) as e:
                last = e
                time.sleep(0.1)
                continue
            if not any(port == self.port for _, _, port in brokers):
                last = ProtocolError(f"Metadata lists no broker on port {self.port}: {brokers}")
                time.sleep(0.1)
                continue
            return
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None
        raise BrokerProblem(
            f"{self} not ready within {timeout} s (last: {last!r}); stderr "
            f"{self.stderr_paths[-1]}:\n{tail(self.stderr_paths[-1])}"
        )

    def _problem(self, msg: str, raise_now: bool):
        msg = f"{self}: {msg}"
        if raise_now:
            raise BrokerProblem(msg)
        self.problems.append(msg)

    def stop(self, timeout: float = STOP_TIMEOUT_S, raise_now: bool = True) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL. A broker that had already exited, did
        not exit in time, exited non-zero, or logged unexpected ERROR lines is a problem:
        raised at once (default) or recorded for teardown."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        problems = []
        rc = proc.poll()
        if rc is not None:
            problems.append(f"exited unexpectedly with status {rc} before it was stopped")
        else:
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait(10)
                problems.append(f"did not exit within {timeout} s of SIGTERM; SIGKILLed")
            else:
                if rc != 0:
                    problems.append(f"exited with status {rc} on SIGTERM (expected 0)")
        problems += self._log_problems(self.stderr_paths[-1])
        if problems:
            self._problem(
                "; ".join(problems)
                + f"\nstderr {self.stderr_paths[-1]}:\n{tail(self.stderr_paths[-1])}",
                raise_now,
            )
        return rc

    def kill9(self):
        """SIGKILL the broker (a crash). It must have been running."""
        if self.proc is None:
            raise RuntimeError(f"{self} is not running")
        proc, self.proc = self.proc, None
        rc = proc.poll()
        if rc is None:
            proc.kill()
            proc.wait(10)
        problems = self._log_problems(self.stderr_paths[-1])
        if rc is not None:
            problems.insert(0, f"exited unexpectedly with status {rc} before kill -9")
        if problems:
            self._problem(
                "; ".join(problems)
                + f"\nstderr {self.stderr_paths[-1]}:\n{tail(self.stderr_paths[-1])}",
                True,
            )

    def restart(self, kill: bool = False) -> "Broker":
        """Stop (SIGTERM, or kill -9 with kill=True) and start again on the same data dir and
        port. With BROKER_IN_MEMORY=1 the rest of the test is skipped instead (nothing would
        survive the restart)."""
        if in_memory_broker():
            pytest.skip("BROKER_IN_MEMORY: the part after the restart is skipped")
        if kill:
            self.kill9()
        else:
            self.stop()
        return self.start()

    def assert_running(self):
        if self.proc is None or self.proc.poll() is not None:
            rc = None if self.proc is None else self.proc.returncode
            raise BrokerProblem(
                f"{self} is not running (status {rc}); stderr "
                f"{self.stderr_paths[-1]}:\n{tail(self.stderr_paths[-1])}"
            )

    # -- logs -----------------------------------------------------------------------------

    def expect_error(self, pattern: str):
        """An ERROR log line matching `pattern` is expected (not a failure)."""
        self._expected.append(re.compile(pattern))

    def _log_problems(self, path: Path) -> list[str]:
        bad = []
        try:
            text = path.read_text(errors="replace")
        except OSError as e:
            return [f"cannot read stderr {path}: {e}"]
        for line in text.splitlines():
            line = ANSI_ESCAPE.sub("", line)
            if " ERROR " in f" {line} " or "panicked at" in line:
                if any(p.search(line) for p in HARMLESS_ERROR_PATTERNS + self._expected):
                    continue
                bad.append(line if len(line) <= 400 else line[:400] + " ...")
        if not bad:
            return []
        shown = "\n  ".join(bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        return [f"unexpected ERROR/panic lines in {path}:\n  {shown}{more}"]

    # -- client helpers (confluent-kafka) -------------------------------------------------

    def client_config(self, conf: dict | None = None) -> dict:
        """confluent-kafka (librdkafka) configuration for this broker, plus `conf`."""
        out = {"bootstrap.servers": self.bootstrap, "broker.address.family": "v4"}
        out.update(conf or {})
        return out

    def admin(self):
        from confluent_kafka.admin import AdminClient

        return AdminClient(self.client_config())

    def create_topic(self, name: str, partitions: int = 1, config: dict | None = None):
        """CreateTopics through confluent-kafka's AdminClient, then wait until Metadata shows
        every partition with a leader."""
        from confluent_kafka.admin import NewTopic

        admin = self.admin()
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
            operation_timeout=30,
            request_timeout=30,
        )
        futures[name].result(timeout=40)
        self.wait_topic(name, partitions, admin)

    def wait_topic(self, name: str, partitions: int, admin=None, timeout: float = 20):
        admin = admin or self.admin()
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            md = admin.list_topics(topic=name, timeout=10)
            t = md.topics.get(name)
            if t is not None and t.error is None and len(t.partitions) == partitions:
                if all(p.leader >= 0 and p.error is None for p in t.partitions.values()):
                    return t
            last = t
            time.sleep(0.2)
        raise AssertionError(f"topic {name} not ready with {partitions} partitions: {last}")

    def assert_serves_clients(self):
        """A real client still works: Metadata lists this broker, and three messages produced
        with acks=all to a new topic are consumed back exactly."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

        self.assert_running()
        md = self.admin().list_topics(timeout=10)
        assert any(b.port == self.port for b in md.brokers.values()), md.brokers
        topic = f"health-{uuid.uuid4().hex[:10]}"
        self.create_topic(topic)
        p = Producer(
            self.client_config({"acks": "all", "linger.ms": 0, "message.timeout.ms": 20000})
        )
        results = []
        for i in range(3):
            p.produce(
                topic,
                key=f"k{i}".encode(),
                value=f"v{i}".encode(),
                headers=[("h", f"{i}".encode())],
                on_delivery=lambda err, msg: results.append((err, msg.offset())),
            )
        assert p.flush(30) == 0, "health produce did not finish"
        assert [e for e, _ in results] == [None] * 3, results
        assert sorted(o for _, o in results) == [0, 1, 2], results
        c = Consumer(
            self.client_config(
                {
                    "group.id": f"health-{topic}",
                    "enable.auto.commit": False,
                    "enable.partition.eof": True,
                }
            )
        )
        try:
            c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
            got = []
            deadline = time.monotonic() + 30
            while len(got) < 3 and time.monotonic() < deadline:
                m = c.poll(0.5)
                if m is None or m.error():
                    continue
                got.append((m.offset(), m.key(), m.value(), m.headers()))
        finally:
            c.close()
        assert got == [
            (i, f"k{i}".encode(), f"v{i}".encode(), [("h", f"{i}".encode())]) for i in range(3)
        ], got
        self.assert_running()


class BrokerPool:
    """What one test started; `close` stops everything and reports problems."""

    def __init__(self, test_name: str, log_dir: Path):
        self.test_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)[:60]
        self.log_dir = log_dir
        self.brokers: list[Broker] = []
        self.data_dirs: list[Path] = []

    def start(self, cores: int = 1, extra_args=(), expect_errors=(), start: bool = True) -> Broker:
        data_dir = Path(tempfile.mkdtemp(prefix=f"ringlog-it-{self.test_name}-", dir=data_root()))
        self.data_dirs.append(data_dir)
        b = Broker(
            f"broker{len(self.brokers)}", data_dir, self.log_dir, cores, extra_args, expect_errors
        )
        self.brokers.append(b)
        if start:
            b.start()
        return b

    def close(self):
        problems = []
        for b in self.brokers:
            try:
                b.stop(raise_now=False)
            except Exception as e:  # noqa: BLE001 - report, keep stopping the others
                problems.append(f"{b}: stopping failed: {e!r}")
            problems += b.problems
        if os.environ.get("RINGLOG_KEEP_DATA", "") in ("", "0"):
            for d in self.data_dirs:
                shutil.rmtree(d, ignore_errors=True)
        if problems:
            pytest.fail("broker problems:\n" + "\n\n".join(problems), pytrace=False)


@pytest.fixture
def broker(request, tmp_path):
    """Factory: broker(cores=1, extra_args=(), expect_errors=()) -> a started Broker."""
    pool = BrokerPool(request.node.name, tmp_path)
    try:
        yield pool.start
    finally:
        pool.close()
