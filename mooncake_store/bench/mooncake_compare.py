"""Drives the Mooncake Store anchor (the real 0.3.13 wheel, see ../shared/anchors/mooncake) with
the same sizes and phase lengths as our run, and returns its JSON-line records.

We only call the anchor's own bench.sh (which starts and stops mooncake_master and the metadata
server by PID); nothing of Mooncake's runs in our process. The caller runs it strictly after our
own phases: on a 2-core box the two must never overlap.
"""
from __future__ import annotations

import dataclasses
import json
import os
import select
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

from .runner import Plan, count_phases
from .stats import now

ENV_DIR = "MSTORE_MOONCAKE_ANCHOR"


class AnchorError(RuntimeError):
    """The anchor is missing or its run failed; the message says what to do."""


@dataclasses.dataclass
class Anchor:
    dir: Path
    venv: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


def default_dir() -> Path:
    """$MSTORE_MOONCAKE_ANCHOR, else ../shared/anchors/mooncake next to the repository."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR])
    repo = Path(__file__).resolve().parents[2]
    for base in (repo.parent, Path.cwd().parent, Path.cwd()):
        cand = base / "shared" / "anchors" / "mooncake"
        if cand.is_dir():
            return cand
    return repo.parent / "shared" / "anchors" / "mooncake"


def install_hint(anchor_dir: Path) -> str:
    return (f"Mooncake anchor not installed: run `{anchor_dir / 'setup.sh'}` "
            f"(creates {anchor_dir / '.venv'}; ~120 MB of wheels), or pass --mooncake-venv PATH "
            f"/ --mooncake-dir PATH. Running ours alone.")


def find(anchor_dir: Path | None = None, venv: Path | None = None) -> tuple[Anchor | None, str]:
    """(Anchor, "") when runnable, else (None, why)."""
    d = Path(anchor_dir) if anchor_dir else default_dir()
    v = Path(venv) if venv else d / ".venv"
    if not (d / "bench.sh").is_file():
        return None, f"no Mooncake anchor at {d} (bench.sh missing)"
    if not (v / "bin" / "python").exists():
        return None, install_hint(d)
    if not (d / ".stub" / "libcuda.so.1").exists():
        return None, f"{d}/.stub/libcuda.so.1 missing: run {d / 'setup.sh'}"
    return Anchor(d, v), ""


def anchor_args(plan: Plan, out: Path) -> list[str]:
    """bench.sh arguments giving the same workload as `plan`."""
    return ["--out", str(out), "--sizes", ",".join(str(s) for s in plan.sizes),
            "--seconds", str(plan.seconds), "--small-seconds", str(plan.small_seconds),
            "--max-gib", str(plan.max_gib), "--ws-mib", str(plan.ws_mib),
            "--max-keys", str(plan.max_keys), "--seg-mib", str(plan.seg_mib),
            "--buf-mib", str(plan.buf_mib), "--memcpy-mib", str(plan.bulk_memcpy_mib or 256)]


def expected_seconds(plan: Plan) -> float:
    """Generous bound on the anchor's wall time: its phases (3 paths) plus client setup."""
    remote_plan = dataclasses.replace(plan, master="anchor")
    return count_phases(remote_plan) * max(plan.seconds, plan.small_seconds * 6) * 2.5 + 240


def run(anchor: Anchor, plan: Plan, on_record: Callable[[], None] = lambda: None,
        timeout: float | None = None) -> list[dict]:
    """Run the anchor's bench.sh; returns its records. Raises AnchorError on failure."""
    timeout = timeout or expected_seconds(plan)
    with tempfile.TemporaryDirectory(prefix="mstore-mooncake-") as tmp:
        out = Path(tmp) / "mooncake.jsonl"
        env = {**os.environ, "MC_VENV": str(anchor.venv), "MC_RUN_DIR": str(Path(tmp) / "run"),
               "MC_TAG": f"mstore-{plan.tag or 'store'}"}
        cmd = ["bash", str(anchor.dir / "bench.sh"), *anchor_args(plan, out)]
        log = Path(tmp) / "bench.log"
        with open(log, "wb") as logf:
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.PIPE, env=env,
                                    start_new_session=True)
            rc = _wait(proc, timeout, on_record)
        if rc != 0:
            tail = log.read_text(errors="replace")[-1500:]
            logs = sorted(p.name for p in (Path(tmp) / "run").glob("*.log"))
            raise AnchorError(f"Mooncake anchor failed (rc={rc}); logs {logs}; "
                              f"output tail:\n{tail}")
        if not out.exists():
            raise AnchorError("Mooncake anchor wrote no results")
        return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def _wait(proc: subprocess.Popen, timeout: float, on_record: Callable[[], None]) -> int:
    """Wait for bench.sh, calling on_record per progress dot; stop it (by PID) on timeout."""
    deadline = now() + timeout
    fd = proc.stderr.fileno()
    try:
        while now() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                for _ in range(chunk.count(b".")):
                    on_record()
        proc.wait(timeout=max(1.0, deadline - now()))
        return proc.returncode
    except (subprocess.TimeoutExpired, KeyboardInterrupt) as e:
        _stop(proc)
        if isinstance(e, KeyboardInterrupt):
            raise
        raise AnchorError(f"Mooncake anchor did not finish in {timeout:.0f} s; "
                          "stopped it") from None
    finally:
        proc.stderr.close()


def _stop(proc: subprocess.Popen) -> None:
    """TERM bench.sh (its trap stops the master and metadata server it started), then KILL."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)   # the session bench.sh leads: only its processes
        proc.wait(timeout=10)


