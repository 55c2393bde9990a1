"""Sizes a person can read: the pool through the client, and a kernel asking for more
GPUs than any node of the pool has."""

import pytest

from loophub import cli
from loophub.pool import readable_bytes


@pytest.mark.parametrize("value, text", [
    (0, "0 B"), (512, "512 B"), (1536, "1.5 KiB"), (16 * 2**30, "16 GiB"),
    (int(23.5 * 2**30), "23.5 GiB"), (25_228_029_952, "23.5 GiB"), (3 * 2**40, "3 TiB")])
def test_readable_bytes(value, text):
    assert readable_bytes(value) == text


def test_client_pool_gives_readable_sizes_beside_the_bytes(api):
    pool = api.client("ann").pool()
    node = pool["nodes"][0]
    assert isinstance(node["mem"], int) and node["mem_readable"] == readable_bytes(node["mem"])
    assert pool["total"]["mem_readable"] == readable_bytes(pool["total"]["mem"])
    if node.get("free"):
        assert node["free"]["mem_readable"] == readable_bytes(node["free"]["mem"])


def test_kernels_install_warns_when_no_node_has_that_many_gpus(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share/jupyter"))
    monkeypatch.setenv("LOOPHUB_POOL", '[{"name": "a", "cpu": 8, "mem": "32G", "gpu": 1},'
                                       ' {"name": "b", "cpu": 8, "mem": "32G", "gpu": 1}]')
    assert cli.main(["kernels", "install", "--gpu", "2", "--prefix", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "2 GPUs" in err and "1" in err and "LOOPHUB_POOL" in err, err
    assert cli.main(["kernels", "install", "--gpu", "1", "--prefix", str(tmp_path)]) == 0
    assert "warning" not in capsys.readouterr().err
