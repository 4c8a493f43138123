"""The README quickstart: the broker with no --data-dir (a relative `ringlog-data`) and its
embedded defaults serves kcat, and SIGTERM stops it with exit code 0.

Only --kafka-addr is given (a free port instead of 9092, which tests never take) and --cores 1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from conftest import DEFAULT_BIN, data_root, free_port


def test_defaults_with_relative_data_dir():
    binary = Path(os.environ.get("RINGLOG_BIN", str(DEFAULT_BIN)))
    workdir = Path(tempfile.mkdtemp(prefix="ringlog-quickstart-", dir=data_root()))
    port = free_port()
    log = open(workdir / "stderr.log", "w")
    proc = subprocess.Popen(
        [str(binary), "--kafka-addr", f"127.0.0.1:{port}", "--cores", "1"],
        cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"},
    )
    try:
        deadline = time.monotonic() + 30
        while "listening for Kafka clients" not in (workdir / "stderr.log").read_text():
            assert proc.poll() is None, (workdir / "stderr.log").read_text()
            assert time.monotonic() < deadline, "broker did not start"
            time.sleep(0.1)
        produce = subprocess.run(
            ["kcat", "-b", f"127.0.0.1:{port}", "-P", "-t", "demo", "-K:"],
            input=b"k1:hello\nk2:world\n", timeout=30, capture_output=True,
        )
        assert produce.returncode == 0, produce.stderr
        consume = subprocess.run(
            ["kcat", "-b", f"127.0.0.1:{port}", "-C", "-t", "demo", "-e", "-f", "%k=%s\\n"],
            timeout=30, capture_output=True,
        )
        assert consume.stdout.decode().split() == ["k1=hello", "k2=world"], consume
        assert (workdir / "ringlog-data" / "demo-0").is_dir()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
