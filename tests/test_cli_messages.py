"""What the online `loophub` commands say when something is missing: written for a
terminal (--token, LOOPHUB_TOKEN, `loophub token`, --create), not for a notebook or a
browser."""

import json

from loophub.cli import main


def cli(api, user, *args):
    return main([*args, "--url", api.url, "--token", f"user:{user}" if user else "nobody"])


def test_a_refused_token_names_the_cli_options(api, capsys):
    assert cli(api, None, "data", "log", "pets") == 2
    err = capsys.readouterr().err
    assert "--token" in err and "LOOPHUB_TOKEN" in err and "loophub token" in err, err
    assert "browser" not in err and "Client(" not in err


def test_importing_into_a_missing_dataset_suggests_create(api, tmp_path, capsys):
    src = tmp_path / "records.jsonl"
    src.write_text(json.dumps({"id": "a", "annotations": []}) + "\n")
    assert cli(api, "ann", "data", "import", "pets", str(src), "--format", "jsonl") == 2
    err = capsys.readouterr().err
    assert "no dataset named 'pets'" in err and "--create" in err, err
    assert "data list" not in err  # no such command to point to


def test_log_of_a_dataset_without_versions_says_so(api, capsys):
    api.client("ann").datasets.create("pets")
    assert cli(api, "ann", "data", "log", "pets") == 0
    out = capsys.readouterr().out
    assert "no versions yet" in out and "loophub data commit" in out, out
