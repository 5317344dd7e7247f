"""icnd init and the config checks of icnd run."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from icn_p2p.cli.icnd import app, read_token
from icn_p2p.identity.keys import load_key_file

PEER = "/ip4/10.0.0.2/tcp/4001/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_creates_key_token_and_a_commented_config_that_loads(tmp_path):
    node = tmp_path / "n1"
    r = invoke("init", node, "--rpc-port", 0, "--p2p-port", 0, "--p2p-host", "127.0.0.1", "--bootstrap", PEER,
               "--region", "eu-central", "--capability", "encryption=1.2", "--capability", "gpu=2",
               "--coop", "healthcare-coop")
    assert r.exit_code == 0, r.stderr
    key = load_key_file(node / "node.key")  # refuses group/other-readable files
    assert key.did in r.stdout
    assert mode(node / "node.key") == 0o600
    assert mode(node / "api-token") == 0o600
    token = read_token(node)
    assert len(token) >= 40 and token == (node / "api-token").read_text().strip()

    text = (node / "node.toml").read_text()
    assert text.count("\n# ") >= 10  # each setting explained
    data = tomllib.loads(text)
    assert data["rpc_port"] == 0 and data["rpc_host"] == "127.0.0.1"
    assert data["listen"] == ["/ip4/127.0.0.1/tcp/0"]
    assert data["bootstrap"] == [PEER]
    assert data["capabilities"] == {"encryption": "1.2", "gpu": "2"}
    assert data["region"] == "eu-central" and data["coops"] == ["healthcare-coop"]

    config_mod = pytest.importorskip("icn_p2p.node.config")
    config = config_mod.NodeConfig.from_toml(node / "node.toml")
    assert config.key_file == node / "node.key"
    assert Path(config.data_dir).resolve() == node.resolve()
    assert config.rpc_port == 0 and config.region == "eu-central"


def test_two_nodes_get_different_keys_and_tokens(tmp_path):
    assert invoke("init", tmp_path / "a").exit_code == 0
    assert invoke("init", tmp_path / "b").exit_code == 0
    assert (tmp_path / "a" / "node.key").read_text() != (tmp_path / "b" / "node.key").read_text()
    assert read_token(tmp_path / "a") != read_token(tmp_path / "b")
    data = tomllib.loads((tmp_path / "a" / "node.toml").read_text())
    assert "region" not in data and data["rpc_port"] == 7711 and data["listen"] == ["/ip4/127.0.0.1/tcp/4001"]


def test_init_refuses_to_overwrite_a_node(tmp_path):
    assert invoke("init", tmp_path / "n").exit_code == 0
    before = (tmp_path / "n" / "node.key").read_text()
    r = invoke("init", tmp_path / "n")
    assert r.exit_code == 1 and "refusing to overwrite" in r.stderr
    assert (tmp_path / "n" / "node.key").read_text() == before


@pytest.mark.parametrize("cap", ["encryption", "=1.0", "encryption=", "encryption=one"])
def test_init_refuses_a_bad_capability(tmp_path, cap):
    r = invoke("init", tmp_path / "n", "--capability", cap)
    assert r.exit_code == 2 and "--capability" in r.stderr
    assert not (tmp_path / "n").exists()


def test_init_refuses_a_bootstrap_address_without_peer_id(tmp_path):
    pytest.importorskip("icn_p2p.node.config")
    r = invoke("init", tmp_path / "n", "--bootstrap", "/ip4/10.0.0.2/tcp/4001")
    assert r.exit_code == 1
    assert "bootstrap" in r.stderr and "/p2p/" in r.stderr
    assert not (tmp_path / "n").exists()


def test_run_refuses_a_bad_config_with_field_and_reason(tmp_path):
    pytest.importorskip("icn_p2p.node.config")
    assert invoke("init", tmp_path / "n").exit_code == 0
    cfg = tmp_path / "n" / "node.toml"
    cfg.write_text(cfg.read_text().replace("rpc_port = 7711", "rpc_port = 70000"))
    r = invoke("run", "--config", cfg)
    assert r.exit_code == 1
    assert "rpc_port" in r.stderr and "65535" in r.stderr
    assert "Traceback" not in r.stderr


def test_run_refuses_a_missing_config_and_missing_token(tmp_path):
    pytest.importorskip("icn_p2p.node.config")
    r = invoke("run", "--config", tmp_path / "nope.toml")
    assert r.exit_code == 1 and "not found" in r.stderr
    assert invoke("init", tmp_path / "n").exit_code == 0
    (tmp_path / "n" / "api-token").unlink()
    r = invoke("run", "--config", tmp_path / "n" / "node.toml")
    assert r.exit_code == 1 and "api-token" in r.stderr


def test_read_token_refuses_open_or_empty_files(tmp_path):
    path = tmp_path / "api-token"
    path.write_text("secret\n")
    path.chmod(0o644)
    with pytest.raises(RuntimeError, match="chmod 600"):
        read_token(tmp_path)
    path.write_text("\n")
    path.chmod(0o600)
    with pytest.raises(RuntimeError, match="empty"):
        read_token(tmp_path)


def test_run_refuses_a_bad_log_level(tmp_path):
    r = invoke("run", "--config", tmp_path / "x.toml", "--log-level", "loud")
    assert r.exit_code == 2


@pytest.mark.parametrize("name", ["node.toml", "node-dev.toml"])
def test_example_configs_load(name):
    config_mod = pytest.importorskip("icn_p2p.node.config")
    path = Path(__file__).parents[2] / "configs" / name
    config = config_mod.NodeConfig.from_toml(path)
    assert config.rpc_host == "127.0.0.1" and config.key_file.name == "node.key"
    assert config.coops


def test_init_join_bootstraps_from_a_node_on_this_machine(tmp_path):
    assert invoke("init", tmp_path / "a", "--p2p-port", "4101").exit_code == 0
    r = invoke("init", tmp_path / "b", "--p2p-port", "4102", "--join", tmp_path / "a")
    assert r.exit_code == 0, r.stderr
    data = tomllib.loads((tmp_path / "b" / "node.toml").read_text())
    assert len(data["bootstrap"]) == 1 and data["bootstrap"][0].startswith("/ip4/127.0.0.1/tcp/4101/p2p/12D3KooW")
    assert "peer id: 12D3KooW" in r.stdout
    assert invoke("init", tmp_path / "c", "--p2p-port", "0").exit_code == 0
    r = invoke("init", tmp_path / "d", "--join", tmp_path / "c")
    assert r.exit_code == 1 and "port chosen at start" in r.stderr
    r = invoke("init", tmp_path / "e", "--join", tmp_path / "missing")
    assert r.exit_code == 1 and "--join" in r.stderr
