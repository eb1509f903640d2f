"""The packed per-object metadata (master/objmeta.py) and the compact wire forms."""
from __future__ import annotations

import msgpack
import pytest

from mooncake_store.config import Config
from mooncake_store.errors import InvalidParams
from mooncake_store.master.index import PIN_HARD, PIN_NONE, Lookup, ObjectIndex
from mooncake_store.master.objmeta import Obj, on_segment, unpack_loc, with_rare_fields
from mooncake_store.master.policy import PrefixLFRUPolicy
from mooncake_store.master.wire import (lookup_from_wire, lookup_to_wire, packed_to_wire,
                                        replicas_from_wire, replicas_to_wire)
from mooncake_store.replica import ReplicateConfig, Slice


def test_plain_object_is_one_packed_int_after_put_end():
    ix = ObjectIndex(Config(global_segment_size=0))
    ix.add_segment("n1:7000", 1 << 20)
    reps = ix.put_start("k", 1000)
    obj = ix._pending["k"]
    assert obj._x is not None and not obj.complete and obj.deadline > 0   # a write in flight
    ix.put_end("k", flags=1)
    obj = ix._objects["k"]
    assert obj._x is None and type(obj._loc) is int                       # nothing rare left
    assert obj.complete and obj.size == 1000 and obj.flags == 1 and obj.tier == "dram"
    assert obj.replicas == tuple(reps) and obj.cold == () and obj.pin == PIN_NONE
    look = ix.get_replicas("k")
    assert look == Lookup(1000, tuple(reps), 1)


def test_rare_fields_round_trip_and_fall_back_to_packed():
    a, b = Slice("a:1", 64, 200), Slice("b:1", 128, 200)
    obj = Obj("k", 100, [(a,)], PIN_HARD, 0.0, 5.0)
    obj.finish(0)
    assert obj.complete and obj.deadline == 0.0
    assert obj._x is not None and obj.pin == PIN_HARD       # hard pin is rare: kept aside
    obj.pin = PIN_NONE
    assert obj._x is None and obj.replicas == ((a,),)
    obj.replicas = [(a,), (b,)]                             # two replicas: not packable
    assert obj._x is not None and obj.replicas == ((a,), (b,))
    obj.cold = ("ssd",)
    obj.tier = "ssd"
    obj.replicas = []
    assert obj.replicas == () and obj.tier == "ssd" and obj.size == 100
    obj.tier, obj.cold = "dram", ()
    obj.replicas = [(b,)]
    assert obj._x is None and obj.replicas == ((b,),)
    striped = (Slice("a:1", 0, 10), Slice("b:1", 0, 10))
    obj.replicas = [striped]
    assert obj.replicas == (striped,)
    obj.busy = True
    obj.cold_hits = 3
    assert obj.busy and obj.cold_hits == 3


def test_out_of_range_values_are_kept_unpacked_or_refused():
    huge = Slice("a:1", 1 << 50, 10)                        # offset beyond the packed field
    obj = Obj("k", 10, [(huge,)], PIN_NONE, 0.0, 0.0)
    obj.complete = True
    assert obj.replicas == ((huge,),) and obj._x is not None
    with pytest.raises(ValueError):
        obj.flags = 256
    ix = ObjectIndex(Config(global_segment_size=0))
    ix.add_segment("n1:1", 1 << 20)
    ix.put_start("k", 10)
    with pytest.raises(InvalidParams):
        ix.put_end("k", flags=300)
    assert ix.batch_put_end_codes(["k", "nope"], 0) == [0, int(ix_code("nope", ix))]


def ix_code(key: str, ix: ObjectIndex) -> int:
    try:
        ix.put_end(key)
    except Exception as e:  # noqa: BLE001
        return e.code
    raise AssertionError("put_end of an unknown key succeeded")


def test_batch_get_packed_matches_batch_get_replicas():
    ix = ObjectIndex(Config(global_segment_size=0))
    ix.add_segment("n1:1", 1 << 20)
    ix.add_segment("n2:1", 1 << 20)
    ix.put_start("one", 100)
    ix.put_end("one", 1)
    ix.put_start("two", 100, ReplicateConfig(replica_num=2))
    ix.put_end("two")
    got = ix.batch_get_packed(["one", "two", "missing"])
    assert type(got[0]) is int and isinstance(got[1], Lookup) and got[2] is None
    size, flags, seg, off, length = unpack_loc(got[0])
    assert (size, flags) == (100, 1)
    assert ix.batch_get_replicas(["one"])[0].replicas == ((Slice(seg, off, length),),)
    # Both wire forms decode to what batch_get_replicas returns, after a msgpack trip.
    looks = ix.batch_get_replicas(["one", "two"])
    wires = msgpack.unpackb(msgpack.packb([packed_to_wire(got[0]), lookup_to_wire(got[1])]))
    assert [lookup_from_wire(w) for w in wires] == looks
    assert len(wires[0]) == 5 and len(wires[1]) == 4


def test_replicas_wire_forms():
    one = [(Slice("a:1", 0, 10),)]
    two = [(Slice("a:1", 0, 10),), (Slice("b:1", 64, 10),)]
    striped = [(Slice("a:1", 0, 10), Slice("b:1", 0, 10))]
    for reps in (one, two, striped, []):
        w = msgpack.unpackb(msgpack.packb(replicas_to_wire(reps)))
        assert replicas_from_wire(w) == reps
    assert replicas_to_wire(one) == ["a:1", 0, 10]          # flat: the common case
    assert replicas_to_wire(None) is None and replicas_from_wire(None) is None
    with pytest.raises(InvalidParams):
        replicas_from_wire(["a:1", 0])          # a flat replica missing its length


def test_master_batch_handlers_fast_and_fallback_paths():
    from mooncake_store.errors import ErrorCode
    from mooncake_store.master.service import MasterService

    svc = MasterService(Config(global_segment_size=0, lease_ttl_ms=0))
    try:
        svc.index.add_segment("n1:1", 1 << 20)
        out = svc.rpc_batch_put_start(["a", "b", "a", "z"], [10, 20, 30, 0])
        assert out[0][0] == 0 and out[0][1][0] == "n1:1" and len(out[0][1]) == 3   # flat form
        assert out[1][0] == 0 and out[2] == [0, None]        # "a" is already being written
        assert out[3][0] == int(ErrorCode.INVALID_PARAMS)    # size 0: that key alone fails
        assert svc.rpc_batch_put_end(["a", "b", "nope"]) == [0, 0, int(ErrorCode.OBJECT_NOT_FOUND)]
        got = svc.rpc_batch_get_replicas(["a", "missing", "b"])
        assert got[1] is None and [lookup_from_wire(w).size for w in (got[0], got[2])] == [10, 20]
        assert lookup_from_wire(got[0]).replicas == (tuple(replicas_from_wire(out[0][1])[0]),)
        # Anything odd takes the per-key path and answers per key, as before.
        bad_rc = svc.rpc_batch_put_start(["c"], [10], {"no_such_field": 1})
        assert bad_rc[0][0] == int(ErrorCode.INVALID_PARAMS)
        mixed = svc.rpc_batch_put_start(["d", 5], [10, 10])
        assert mixed[0][0] == 0 and mixed[1][0] == int(ErrorCode.INVALID_PARAMS)
    finally:
        svc.rpc.close()


def test_the_policy_keeps_its_state_in_the_index_objects():
    """The default policy is bound to the index: its per-key state is Obj.pol (no dict of
    its own), an upsert hands it on, and it orders keys exactly as a standalone policy
    given the same calls. Its queues hold the very key string the index holds."""
    ix = ObjectIndex(Config(global_segment_size=0, lease_ttl_ms=0))
    ix.add_segment("n1:7000", 1 << 20)
    twin = PrefixLFRUPolicy()
    assert ix.policy._nodes is ix._objects
    for i in range(6):
        key = "".join(["key-", str(i)])              # a fresh str object each time
        ix.put_start(key, 100)
        ix.put_end("key-" + str(i))                   # an equal but distinct str
        twin.on_insert(key, 100)
    first = ix._objects["key-0"]
    assert first.pol is not None and next(iter(ix._objects)) is first.key
    assert any(k is first.key for k, _st in ix.policy._queues[1].entries())
    ix.batch_get_replicas(["key-0", "key-1"])        # fresh equal strings, as from an RPC
    held = {k: o.key for k, o in ix._objects.items()}
    moved = [k for k, _st in ix.policy._queues[2].entries()]   # used twice: class 2
    assert moved == ["key-0", "key-1"] and all(held[k] is k for k in moved)   # not the reader's
    twin.hint_prefix(["key-0", "key-1"])
    for k in ("key-0", "key-1"):
        twin.on_access(k)
    ix.put_start("key-0", 200, upsert=True)   # a new object: the key's state goes with it
    ix.put_end("key-0")
    twin.on_insert("key-0", 200)
    assert ix._objects["key-0"] is not first and first.pol is not None
    assert ix.policy.uses("key-0") == twin.uses("key-0") == 2   # not restarted at 1
    ix.remove("key-3")
    twin.on_remove("key-3")
    assert "key-3" not in ix._objects and len(ix.policy) == len(twin) == 5
    assert list(ix.policy.victims()) == list(twin.victims())


def test_objects_on_a_segment_are_found_from_the_packed_layout():
    def obj(key, *replicas):
        o = Obj(key, 100, [tuple(Slice(seg, off, 128) for seg, off in r) for r in replicas],
                PIN_NONE, 0.0, 0.0)
        o.complete = True
        return o

    objects = {o.key: o for o in [
        obj("packed-here", [("s1", 0)]),
        obj("packed-elsewhere", [("s2", 0)]),
        obj("two-replicas", [("s2", 128)], [("s1", 128)]),     # rare: kept in _x
        obj("striped", [("s2", 256), ("s1", 256)]),            # a part on s1
        obj("striped-elsewhere", [("s2", 384), ("s3", 0)]),
        obj("no-replica"),
    ]}
    assert [k for k, _ in on_segment(objects, "s1")] == ["packed-here", "two-replicas", "striped"]
    assert on_segment(objects, "never-seen-segment") == []
    assert {k for k, _ in with_rare_fields(objects)} == {"two-replicas", "striped",
                                                         "striped-elsewhere"}
