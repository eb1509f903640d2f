"""Shared-secret handshake: on, off, wrong, missing, one-sided."""
from __future__ import annotations

import numpy as np
import pytest

from mooncake_store.transfer import AuthFailed, TransferEngine
from mooncake_store.transfer.engine import AUTH_FAILED

from support import wire
from targets import Target


@pytest.fixture(scope="module")
def secured():
    t = Target(size=4 << 20, token="s3cret")
    yield t
    t.stop()


def _read(te, target):
    base, _ = target.regions["memfd"]
    return te.transfer_sync_read(target.name, np.zeros(64, np.uint8), base, 64)


@pytest.mark.parametrize("use_shm", [True, False])
def test_right_secret_works(secured, use_shm):
    with TransferEngine(auth_token="s3cret", use_shm=use_shm) as te:
        assert _read(te, secured) == 0
        assert te.transport(secured.name) == ("shm" if use_shm else "tcp")


def test_right_secret_from_env(secured, monkeypatch):
    monkeypatch.setenv("MOONCAKE_AUTH_TOKEN", "s3cret")
    with TransferEngine() as te:
        assert _read(te, secured) == 0


@pytest.mark.parametrize("token", ["", "wrong", "s3cret2"])
def test_missing_or_wrong_secret_refused(secured, token):
    before = secured.stats()["auth_failures"]
    with TransferEngine(auth_token=token) as te:
        assert _read(te, secured) == AUTH_FAILED
        with pytest.raises(AuthFailed):
            te.connect(secured.name)
    assert secured.stats()["auth_failures"] > before


def test_server_without_secret_is_refused_by_client_with_one(make_target):
    open_target = make_target(size=1 << 20)
    with TransferEngine(auth_token="s3cret") as te:
        assert _read(te, open_target) == AUTH_FAILED


def test_both_without_secret_work(make_target):
    open_target = make_target(size=1 << 20)
    with TransferEngine(auth_token="") as te:
        assert _read(te, open_target) == 0


def test_forged_mac_refused_on_the_wire(secured):
    s, status = wire.connect(secured.port, mac=b"\x42" * 32, flags=1)
    try:
        assert status == AUTH_FAILED
        assert s.recv(1) == b""  # and the server closed the connection
    finally:
        s.close()
