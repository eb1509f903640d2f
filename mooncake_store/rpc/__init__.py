"""Control-plane RPC: msgpack messages over pyzmq ROUTER (server) / DEALER (client) sockets."""
from .client import RpcClient
from .protocol import VERSION
from .server import RpcServer

__all__ = ["RpcClient", "RpcServer", "VERSION"]
