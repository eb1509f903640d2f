"""Helpers shared by every test directory, kept here once instead of copied per file.

Import as `support.<module>` from any test: tests/conftest.py stands at the top of tests/
with no __init__.py beside it, so pytest's default ("prepend") import mode puts tests/ on
sys.path before any test module loads, for `pytest tests` and for a single file alike.

    net       free loopback ports, exact-length reads, waiting for a peer to hang up
    wire      a hand-written client of the transfer engine's tcp protocol
    zmtp      a hand-written ZMTP 3.0 peer, to reach the master RPC without pyzmq
    procs     bounded polling, stopping a child process by PID, this process's RSS
    cluster   master, node and etcd processes on 127.0.0.1
    fixtures  pytest fixtures; a conftest or test module imports the ones it wants
"""
