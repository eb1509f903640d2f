"""Where a Worker runs: in this process next to the embedded segment ("local"), or in a spawned
process connected to a cluster master (the writer with a segment, the segment-less reader).

Both expose `call(phase, **kwargs) -> dict` and `close()`, so the runner does not care which.
"""
from __future__ import annotations

import multiprocessing as mp
from typing import Any

from .workloads import Worker


class BenchSetupError(RuntimeError):
    """A client could not be started; the message says why and what to do."""


def _open_store(store_kwargs: dict) -> Any:
    from ..client.store import Store

    return Store(**store_kwargs)


class LocalClient:
    """Worker and store in this process."""

    def __init__(self, role: str, store_kwargs: dict, buf_bytes: int) -> None:
        from ..errors import StoreError

        self.role = role
        try:
            self.store = _open_store(store_kwargs)
        except StoreError as e:
            raise BenchSetupError(f"{role}: cannot open the store: {e}") from None
        self.worker = Worker(self.store, buf_bytes)

    def call(self, phase: str, **kw: Any) -> dict:
        return getattr(self.worker, phase)(**kw)

    def stats(self) -> dict:
        return self.store.stats()

    def close(self) -> None:
        self.store.close()


def _serve(conn: Any, store_kwargs: dict, buf_bytes: int, env: dict) -> None:
    """Child process: open a store, then run phases sent over the pipe until 'quit'."""
    import os

    os.environ.update(env)   # e.g. MOONCAKE_SHM=0: this client's transport choice
    try:
        store = _open_store(store_kwargs)
        worker = Worker(store, buf_bytes)
    except Exception as e:  # noqa: BLE001 - reported to the parent, which prints it
        conn.send({"error": f"{type(e).__name__}: {e}"})
        return
    conn.send({"ok": True})
    try:
        while True:
            phase, kw = conn.recv()
            if phase == "quit":
                break
            try:
                conn.send(getattr(worker, phase)(**kw))
            except Exception as e:  # noqa: BLE001 - keep serving; the parent reports it
                conn.send({"error": f"{phase}: {type(e).__name__}: {e}"})
    finally:
        store.close()


class ProcessClient:
    """Worker and store in a spawned process (the 'remote' column with --master)."""

    def __init__(self, role: str, store_kwargs: dict, buf_bytes: int,
                 env: dict | None = None, start_timeout: float = 120.0) -> None:
        self.role = role
        self.conn, child = mp.get_context("spawn").Pipe()
        self.proc = mp.get_context("spawn").Process(
            target=_serve, args=(child, store_kwargs, buf_bytes, dict(env or {})), daemon=True)
        self.proc.start()
        hello = self._recv(start_timeout)
        if "error" in hello:
            self.close()
            raise BenchSetupError(f"{role}: cannot open the store: {hello['error']}")

    def _recv(self, timeout: float) -> dict:
        if not self.conn.poll(timeout):
            raise BenchSetupError(f"{self.role}: no answer in {timeout:.0f} s "
                                  f"(process alive: {self.proc.is_alive()})")
        return self.conn.recv()

    def call(self, phase: str, timeout: float = 600.0, **kw: Any) -> dict:
        self.conn.send((phase, kw))
        res = self._recv(timeout)
        if "error" in res:
            raise BenchSetupError(f"{self.role}: {res['error']}")
        return res

    def stats(self) -> dict:
        return {}

    def close(self) -> None:
        if self.proc.is_alive():
            try:
                self.conn.send(("quit", {}))
            except (OSError, BrokenPipeError):
                pass
            self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
