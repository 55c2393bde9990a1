import json

import pytest

from loophub.pool import GIB, PoolConfigError, detect_local_node, load_pool, parse_pool


def test_detects_this_machine():
    node = detect_local_node()
    assert node.cpu >= 1 and node.mem > GIB / 4 and node.gpu >= 0


def test_declared_pool_inline_and_file(tmp_path):
    declared = [{"name": "gpu1", "cpu": 2, "mem": "4G", "gpu": 4, "gpu_type": "a100"},
                {"cpu": 8, "mem": 2**34}]
    nodes = load_pool(json.dumps(declared))
    assert [(n.name, n.cpu, n.mem, n.gpu) for n in nodes] == [
        ("gpu1", 2.0, 4 * GIB, 4), ("node1", 8.0, 2**34, 0)]
    path = tmp_path / "pool.json"
    path.write_text(json.dumps({"nodes": declared}))
    assert load_pool(str(path)) == nodes


@pytest.mark.parametrize("declared, message", [
    ([], "non-empty list"),
    ([{"cpu": 1, "mem": "1G", "gpus": 2}], "unknown keys ['gpus']"),
    ([{"cpu": 0, "mem": "1G"}], "[0].cpu: must be a positive"),
    ([{"cpu": 1, "mem": "lots"}], "[0].mem: 'lots' is not a memory size"),
    ([{"cpu": 1, "mem": "1G", "gpu": 1.5}], "[0].gpu: must be a whole number"),
    ([{"name": "a", "cpu": 1, "mem": 1}, {"name": "a", "cpu": 1, "mem": 1}], "duplicate"),
])
def test_bad_pools_say_where(declared, message):
    with pytest.raises(PoolConfigError) as err:
        parse_pool(declared)
    assert message in str(err.value)


def test_bad_json_and_missing_file(tmp_path):
    with pytest.raises(PoolConfigError, match="invalid JSON at line 1"):
        load_pool("[{")
    with pytest.raises(PoolConfigError, match="cannot read pool file"):
        load_pool(str(tmp_path / "nope.json"))
