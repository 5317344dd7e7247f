"""``icnd run`` as a real process: icnctl talks to it, SIGTERM stops it cleanly."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from icn_p2p.cli.icnctl import app as icnctl
from icn_p2p.cli.icnd import app as icnd

REPO = Path(__file__).parents[2]
POLICY = REPO / "configs" / "policies" / "permissive-development.json"


def _wait_for_url(proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(r"event=node_ready .*rpc=(http://\S+)", log.read_text())
        if m:
            return m.group(1)
        if proc.poll() is not None:
            raise AssertionError(f"icnd exited with {proc.returncode}: {log.read_text()}")
        time.sleep(0.05)
    raise AssertionError(f"icnd did not become ready: {log.read_text()}")


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_icnd_run_serves_icnctl_and_stops_on_signal(tmp_path, stop_signal):
    home = tmp_path / "n1"
    r = CliRunner().invoke(icnd, ["init", str(home), "--rpc-port", "0", "--p2p-port", "0",
                                  "--p2p-host", "127.0.0.1", "--coop", "dev-sandbox"])
    assert r.exit_code == 0, r.stderr
    log = tmp_path / "icnd.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "icn_p2p.cli.icnd", "run", "--config",
                                 str(home / "node.toml")], stderr=err, stdout=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = _wait_for_url(proc, log)
        runner = CliRunner()
        info = runner.invoke(icnctl, ["--node", url, "node", "info", "--json"])
        assert info.exit_code == 0, info.stderr
        doc = json.loads(info.stdout)
        assert doc["did"].startswith("did:key:z6Mk") and doc["coops"] == ["dev-sandbox"]
        assert doc["listen_addrs"][0].startswith("/ip4/127.0.0.1/tcp/")
        assert doc["listen_addrs"][0].endswith(f"/p2p/{doc['peer_id']}")

        denied = runner.invoke(icnctl, ["--node", url, "policy", "set", "--policy", str(POLICY)])
        assert denied.exit_code == 1 and "unauthorized" in denied.stderr
        ok = runner.invoke(icnctl, ["--node", url, "--data-dir", str(home), "policy", "set",
                                    "--policy", str(POLICY), "--json"])
        assert ok.exit_code == 0, ok.stderr
        assert json.loads(ok.stdout)["version"] == 1
        shown = runner.invoke(icnctl, ["--node", url, "policy", "show", "--coop-id", "dev-sandbox", "--json"])
        assert shown.exit_code == 0
        assert json.loads(shown.stdout)["policy"] == json.loads(POLICY.read_text())
    finally:
        proc.send_signal(stop_signal)
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:  # pragma: no cover - a hung shutdown is the failure
            proc.kill()
            raise
    text = log.read_text()
    assert code == 0, text
    assert f"event=signal signal={stop_signal.name} action=stop" in text
    assert "event=node_stopped" in text and "event=stopped" in text
    assert "Traceback" not in text
    for line in text.splitlines():
        assert re.match(r"^ts=\S+ level=\w+ logger=\S+ ", line), line


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_icnd_run_in_process_until_sigint(tmp_path):
    """The same path in this process (so coverage sees it): ready, serve, SIGINT, stores closed."""
    import logging
    import threading

    import httpx

    port = _free_port()
    home = tmp_path / "n1"
    r = CliRunner().invoke(icnd, ["init", str(home), "--rpc-port", str(port), "--p2p-port", "0",
                                  "--p2p-host", "127.0.0.1"])
    assert r.exit_code == 0
    seen: dict = {}

    def poke() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                seen["health"] = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).json()
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    threading.Thread(target=poke, daemon=True).start()
    try:
        result = CliRunner().invoke(icnd, ["run", "--config", str(home / "node.toml"), "--log-level", "debug"])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert result.exit_code == 0, result.stderr
    assert seen["health"]["ok"] is True and seen["health"]["did"].startswith("did:key:")
    assert "event=node_ready" in result.stderr and "event=stopped" in result.stderr


def test_icnd_run_reports_a_busy_port(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        home = tmp_path / "n1"
        assert CliRunner().invoke(icnd, ["init", str(home), "--rpc-port", str(port), "--p2p-port", "0",
                                         "--p2p-host", "127.0.0.1"]).exit_code == 0
        import logging

        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        try:
            result = CliRunner().invoke(icnd, ["run", "--config", str(home / "node.toml")])
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
