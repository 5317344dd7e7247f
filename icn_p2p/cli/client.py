"""A small synchronous JSON-RPC client for ``icnctl``.

``RpcClient(url, token).call("policy.get", coop_id="x")`` returns the result
object or raises ``RpcCallError`` (the node answered with an error) or
``NodeUnreachable`` (no answer at all). The CLI turns both into one line on
stderr and an exit code; no traceback reaches the user.
"""

from __future__ import annotations

import itertools
from typing import Any

import httpx

from icn_p2p.api.defaults import DEFAULT_NODE_URL


class ClientError(Exception):
    """Anything that stops a call; ``str()`` is the one line to show."""


class NodeUnreachable(ClientError):
    def __init__(self, url: str, why: str) -> None:
        super().__init__(f"cannot reach node at {url}: {why}")
        self.url = url
        self.why = why


class RpcCallError(ClientError):
    """The node answered with a JSON-RPC error."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        self.code = code
        self.message = message
        self.data = data if isinstance(data, dict) else {}
        self.reason: str | None = self.data.get("reason")
        super().__init__(f"{self.reason}: {message}" if self.reason else message)


def rpc_endpoint(url: str) -> str:
    """``http://host:port`` -> ``http://host:port/rpc`` (an explicit path is kept)."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    scheme, rest = url.split("://", 1)
    if "/" not in rest.rstrip("/"):
        return f"{scheme}://{rest.rstrip('/')}/rpc"
    return url


def _why(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectError):
        text = str(exc).lower()
        if "refused" in text:
            return "connection refused"
        if "name or service" in text or "nodename" in text or "resolve" in text:
            return "unknown host"
        return "cannot connect"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return type(exc).__name__


class RpcClient:
    """One node, one token, one HTTP connection pool."""

    def __init__(self, url: str = DEFAULT_NODE_URL, token: str | None = None, *, timeout: float = 10.0) -> None:
        self.url = url
        self.endpoint = rpc_endpoint(url)
        self.token = token
        headers = {"content-type": "application/json"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        self._http = httpx.Client(timeout=timeout, headers=headers)
        self._ids = itertools.count(1)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "RpcClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, /, **params: Any) -> Any:
        """Call ``method`` with named params (None values are left out)."""
        request = {
            "jsonrpc": "2.0",
            "id": next(self._ids),
            "method": method,
            "params": {k: v for k, v in params.items() if v is not None},
        }
        try:
            response = self._http.post(self.endpoint, json=request)
        except httpx.HTTPError as e:
            raise NodeUnreachable(self.url, _why(e)) from None
        try:
            doc = response.json()
        except ValueError:
            raise ClientError(
                f"node at {self.url} answered HTTP {response.status_code} without JSON-RPC"
            ) from None
        if not isinstance(doc, dict) or doc.get("jsonrpc") != "2.0":
            raise ClientError(
                f"node at {self.url} answered HTTP {response.status_code} without JSON-RPC"
            )
        if "error" in doc:
            err = doc["error"] if isinstance(doc["error"], dict) else {}
            raise RpcCallError(int(err.get("code", 0)), str(err.get("message", "error")), err.get("data"))
        if "result" not in doc:
            raise ClientError(f"node at {self.url} sent neither result nor error")
        return doc["result"]
