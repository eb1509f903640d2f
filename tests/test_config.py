import json

import pytest

from mooncake_store import Config, InvalidParams, parse_size


@pytest.mark.parametrize("text,expected", [(4096, 4096), ("16MB", 16 << 20), ("4 GB", 4 << 30),
                                           ("512kb", 512 << 10), ("1.5 GiB", 3 << 29), ("7", 7)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "MB", "-1", "4XB", -5, True, None, [1]])
def test_parse_size_rejects(bad):
    with pytest.raises(InvalidParams):
        parse_size(bad)


def test_precedence_file_env_args(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"global_segment_size": "8MB", "lease_ttl_ms": 10, "protocol": "tcp"}))
    env = {"MOONCAKE_CONFIG_PATH": str(f), "MOONCAKE_LEASE_TTL_MS": "20",
           "MOONCAKE_GLOBAL_SEGMENT_SIZE": "16MB", "MOONCAKE_MASTER": "embedded"}
    c = Config.load(env=env, lease_ttl_ms=30)
    assert c.global_segment_size == 16 << 20 and c.lease_ttl_ms == 30 and c.embedded


def test_yaml_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("capacity: 2GB\nhigh_watermark: 0.9\n")
    c = Config.load(path=str(f), env={})
    assert c.global_segment_size == 2 << 30 and c.high_watermark == 0.9


@pytest.mark.parametrize("kwargs,field", [({"high_watermark": 1.5}, "high_watermark"),
                                          ({"lease_ttl_ms": "x"}, "lease_ttl_ms"),
                                          ({"protocol": "udp"}, "protocol"),
                                          ({"enable_ssd_offload": "maybe"}, "enable_ssd_offload"),
                                          ({"unknown_thing": 1}, "unknown_thing"),
                                          ({"heartbeat_ms": 0}, "heartbeat_ms"),
                                          # nodes would be declared dead between heartbeats
                                          ({"heartbeat_ms": 2000, "node_ttl_ms": 1000},
                                           "node_ttl_ms")])
def test_errors_name_the_field(kwargs, field):
    with pytest.raises(InvalidParams, match=field):
        Config.load(env={}, **kwargs)


def test_bad_files(tmp_path):
    with pytest.raises(InvalidParams, match="missing.json"):
        Config.load(path=str(tmp_path / "missing.json"), env={})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InvalidParams, match="bad.json"):
        Config.load(path=str(bad), env={})
    lst = tmp_path / "list.json"
    lst.write_text("[1, 2]")
    with pytest.raises(InvalidParams, match="mapping"):
        Config.load(path=str(lst), env={})
