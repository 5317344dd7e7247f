"""The RPC client against servers that misbehave: junk, silence, non-JSON-RPC answers."""

from __future__ import annotations

import socket
import threading

import pytest

from icn_p2p.cli.client import ClientError, NodeUnreachable, RpcClient, rpc_endpoint


class RawServer:
    """Accepts connections on 127.0.0.1 and answers each with fixed bytes (or nothing)."""

    def __init__(self, reply: bytes | None) -> None:
        self.reply = reply
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            conn.recv(65536)
            if self.reply is not None:
                conn.sendall(self.reply)
                conn.close()

    def close(self) -> None:
        self.sock.close()
        for c in self._conns:
            c.close()


def http_reply(body: bytes, status: str = "200 OK") -> bytes:
    return (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode() + body


@pytest.mark.parametrize("url, endpoint", [
    ("http://127.0.0.1:7711", "http://127.0.0.1:7711/rpc"),
    ("http://127.0.0.1:7711/", "http://127.0.0.1:7711/rpc"),
    ("127.0.0.1:7711", "http://127.0.0.1:7711/rpc"),
    ("https://node.example/api/rpc", "https://node.example/api/rpc"),
])
def test_rpc_endpoint(url, endpoint):
    assert rpc_endpoint(url) == endpoint


@pytest.mark.parametrize("body, message", [
    (b"<html>oops</html>", "without JSON-RPC"),
    (b'{"jsonrpc": "2.0", "id": 1}', "neither result nor error"),
    (b"[1, 2]", "without JSON-RPC"),
])
def test_answers_that_are_not_json_rpc(body, message):
    srv = RawServer(http_reply(body))
    try:
        with RpcClient(srv.url) as client, pytest.raises(ClientError, match=message):
            client.call("node.info")
    finally:
        srv.close()


def test_silent_node_times_out():
    srv = RawServer(None)
    try:
        with RpcClient(srv.url, timeout=0.3) as client, pytest.raises(NodeUnreachable) as e:
            client.call("node.info")
        assert str(e.value) == f"cannot reach node at {srv.url}: timed out"
    finally:
        srv.close()


def test_connection_closed_without_answer():
    srv = RawServer(b"")
    try:
        with RpcClient(srv.url) as client, pytest.raises(NodeUnreachable) as e:
            client.call("node.info")
        assert str(e.value).startswith(f"cannot reach node at {srv.url}: ")
    finally:
        srv.close()


def test_unknown_host():
    with RpcClient("http://no-such-host.invalid:7711", timeout=2) as client, pytest.raises(NodeUnreachable) as e:
        client.call("node.info")
    assert "no-such-host.invalid" in str(e.value)


def test_error_object_with_odd_shapes():
    srv = RawServer(http_reply(b'{"jsonrpc": "2.0", "id": 1, "error": {"code": -32000, "message": "boom"}}'))
    try:
        with RpcClient(srv.url, token="t") as client, pytest.raises(ClientError) as e:
            client.call("node.info")
        assert str(e.value) == "boom" and e.value.reason is None and e.value.code == -32000
    finally:
        srv.close()
