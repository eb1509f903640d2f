"""Wire messages of the control plane (msgpack, one zmq frame each).

request:  [version, request_id, method, args, token]
response: [version, request_id, code, result]      code 0: result is the return value;
                                                    code < 0: result is the error message

Every message carries the protocol version; a peer speaking another version gets
INVALID_PARAMS back instead of a misparse. Request ids let a client drop answers
to calls it already gave up on (timeouts), so a late reply never answers the wrong call.
"""
from __future__ import annotations

from typing import Any

import msgpack

from ..errors import ErrorCode

VERSION = 1


class BadMessage(Exception):
    """A frame that is not a well-formed message of this protocol."""


def pack_request(req_id: int, method: str, args: list, token: str) -> bytes:
    return msgpack.packb([VERSION, req_id, method, args, token], use_bin_type=True)


def unpack_request(frame: bytes) -> tuple[int, int, str, list, str]:
    try:
        msg = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception as e:  # noqa: BLE001 - any decode failure is a bad frame
        raise BadMessage(f"undecodable request: {e}") from None
    if not isinstance(msg, list) or len(msg) != 5:
        raise BadMessage("request must be a 5-element array")
    version, req_id, method, args, token = msg
    if not isinstance(req_id, int) or not isinstance(method, str) or not isinstance(args, list) \
            or not isinstance(token, str) or not isinstance(version, int):
        raise BadMessage("request fields have the wrong types")
    return version, req_id, method, args, token


def pack_response(req_id: int, code: int, result: Any) -> bytes:
    return msgpack.packb([VERSION, req_id, int(code), result], use_bin_type=True)


def unpack_response(frame: bytes) -> tuple[int, int, int, Any]:
    try:
        msg = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception as e:  # noqa: BLE001
        raise BadMessage(f"undecodable response: {e}") from None
    if not isinstance(msg, list) or len(msg) != 4 or not isinstance(msg[1], int):
        raise BadMessage("response must be a 4-element array")
    return msg[0], msg[1], msg[2], msg[3]


OK = int(ErrorCode.OK)
