"""The node's HTTP face: a small ASGI app served by hypercorn on trio.

Routes: ``POST /rpc`` (JSON-RPC 2.0), ``GET /metrics`` (Prometheus text from
``icn_p2p.metrics.REGISTRY``) and ``GET /healthz`` (JSON: ok, node DID, peers).
Three routes do not need a framework; the app holds no state of its own.

``serve`` runs it with ``hypercorn.trio.serve`` and reports the address it
actually bound, so ``port=0`` works for tests and several nodes on one host.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Awaitable, Callable

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from icn_p2p.metrics import REGISTRY

from .defaults import DEFAULT_RPC_HOST, DEFAULT_RPC_PORT
from .jsonrpc import INVALID_REQUEST, Dispatcher, RpcError, error_response

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 1024 * 1024

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_JSON = b"application/json"


class BodyTooLarge(Exception):
    pass


class ApiApp:
    """ASGI app: ``/rpc``, ``/metrics``, ``/healthz``; 404 elsewhere."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        registry: CollectorRegistry = REGISTRY,
        max_body: int = DEFAULT_MAX_BODY,
        access_log: bool = False,
    ) -> None:
        self.dispatcher = dispatcher
        self.registry = registry
        self.max_body = max_body
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "http":
            started = time.perf_counter()
            status = await self._http(scope, receive, send)
            if self.access_log:
                log.info(
                    "event=http_request method=%s path=%s status=%d ms=%.2f",
                    scope.get("method"), scope.get("path"), status,
                    (time.perf_counter() - started) * 1000,
                )
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> int:
        path = scope.get("path", "")
        method = scope.get("method", "GET")
        routes = {"/rpc": ("POST",), "/metrics": ("GET", "HEAD"), "/healthz": ("GET", "HEAD")}
        if path not in routes:
            return await _respond(send, 404, _json({"error": "not found", "path": path}))
        if method not in routes[path]:
            return await _respond(
                send, 405, _json({"error": f"method {method} not allowed"}),
                extra=[(b"allow", ", ".join(routes[path]).encode())],
            )
        if path == "/metrics":
            return await _respond(send, 200, generate_latest(self.registry), CONTENT_TYPE_LATEST.encode())
        if path == "/healthz":
            return await self._healthz(send)
        return await self._rpc(scope, receive, send)

    async def _healthz(self, send: Send) -> int:
        try:
            health = await self.dispatcher.service.health()
        except Exception as e:  # a sick node answers 503, not a traceback
            log.warning("event=healthz_failed error=%s", type(e).__name__)
            return await _respond(send, 503, _json({"ok": False, "error": type(e).__name__}))
        body = health.model_dump(mode="json")
        return await _respond(send, 200 if health.ok else 503, _json(body))

    async def _rpc(self, scope: Scope, receive: Receive, send: Send) -> int:
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        too_large = RpcError(
            INVALID_REQUEST,
            f"request body larger than {self.max_body} bytes",
            {"reason": "body_too_large", "max_bytes": self.max_body},
        )
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                if int(declared) > self.max_body:
                    return await _respond(send, 413, _json(error_response(too_large)), close=True)
            except ValueError:
                pass
        try:
            body = await _read_body(receive, self.max_body)
        except BodyTooLarge:
            return await _respond(send, 413, _json(error_response(too_large)), close=True)
        authorization = headers.get(b"authorization")
        reply = await self.dispatcher.handle(
            body, authorization.decode("latin-1") if authorization is not None else None
        )
        if reply.body is None:
            return await _respond(send, 204, b"", None)
        return await _respond(send, 200, reply.body)


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes | None = _JSON,
    *,
    extra: list[tuple[bytes, bytes]] | None = None,
    close: bool = False,
) -> int:
    headers = [(b"content-length", str(len(body)).encode())]
    if content_type is not None:
        headers.append((b"content-type", content_type))
    if close:
        headers.append((b"connection", b"close"))
    headers.extend(extra or [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    return status


@dataclass(frozen=True)
class BoundAddress:
    """Where the server listens once started (the real port when asked for 0)."""

    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def hypercorn_config(host: str, port: int, *, access_log: bool = False) -> Config:
    config = Config()
    bind_host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    config.bind = [f"{bind_host}:{port}"]
    # hypercorn's own lines go to our logger, not straight to stderr.
    errorlog = logging.getLogger("icn_p2p.api.hypercorn")
    if errorlog.level == logging.NOTSET:
        errorlog.setLevel(logging.WARNING)  # its "Running on" line repeats our rpc_listening
    config.errorlog = errorlog
    config.accesslog = None
    config.include_server_header = False
    config.graceful_timeout = 2.0
    config.keep_alive_timeout = 5.0
    return config


def _parse_bind(bind: str) -> BoundAddress:
    hostport = bind.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    return BoundAddress(host.strip("[]"), int(port))


async def serve(
    app: Any,
    host: str = DEFAULT_RPC_HOST,
    port: int = DEFAULT_RPC_PORT,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[BoundAddress] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until cancelled (or ``shutdown_trigger`` returns); report the bound address."""
    config = hypercorn_config(host, port, access_log=getattr(app, "access_log", False))
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(hypercorn_serve, app, config, shutdown_trigger=shutdown_trigger))
        bound = _parse_bind(binds[0])
        log.info("event=rpc_listening url=%s", bound.url)
        task_status.started(bound)
