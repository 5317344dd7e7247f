"""JSON-RPC 2.0 dispatch, independent of HTTP.

``Dispatcher.handle(body, authorization)`` takes the raw request body and the
``Authorization`` header and returns what to send: a JSON document, or nothing
(a notification, or a batch made only of notifications). It never raises and
never puts a traceback on the wire: an unexpected exception is logged here and
answered with ``-32603``.

Reads are open; methods that change state (``policy.set``, ``policy.remove``,
``compute.submit``, ``compute.cancel``) need ``Authorization: Bearer <token>``,
compared in constant time.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Histogram
from pydantic import BaseModel, ValidationError

from icn_p2p.metrics import REGISTRY

from .service import METHODS, Method, NodeService, ServiceError

log = logging.getLogger(__name__)

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SERVER_ERROR = -32000
UNAUTHORIZED = -32001

DEFAULT_MAX_BATCH = 100

RPC_REQUESTS = Counter(
    "icn_rpc_requests", "JSON-RPC calls answered, by method and outcome",
    ["method", "outcome"], registry=REGISTRY,
)
RPC_SECONDS = Histogram(
    "icn_rpc_seconds", "Time to answer one JSON-RPC call, by method",
    ["method"], buckets=(1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5, 1.0, 5.0),
    registry=REGISTRY,
)


class RpcError(Exception):
    """A JSON-RPC error object to send back."""

    def __init__(self, code: int, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_dict(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


def error_response(error: RpcError, id_: Any = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": error.to_dict(), "id": id_}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc)


def invalid_params(exc: ValidationError, *, prefix: str = "") -> RpcError:
    """-32602 naming each bad field (dotted JSON path) and why, without echoing the input."""
    errors = []
    for e in exc.errors(include_input=False, include_url=False, include_context=False):
        loc = tuple(e.get("loc", ()))
        path = _field_path(((prefix,) if prefix else ()) + loc) if (prefix or loc) else "params"
        reason = e.get("msg", "invalid")
        if reason.startswith("Value error, "):
            reason = reason[len("Value error, "):]
        errors.append({"field": path, "reason": reason, "type": e.get("type", "invalid")})
    first = errors[0] if errors else {"field": "params", "reason": "invalid"}
    message = f"invalid params: {first['field']}: {first['reason']}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    return RpcError(INVALID_PARAMS, message, {"reason": "invalid_params", "errors": errors})


def _valid_id(id_: Any) -> bool:
    if id_ is None or isinstance(id_, str):
        return True
    return isinstance(id_, (int, float)) and not isinstance(id_, bool)


@dataclass(frozen=True)
class Reply:
    """What the transport sends: ``body`` None means no content (HTTP 204)."""

    body: bytes | None


class Dispatcher:
    """Parses, authorises, validates and routes JSON-RPC calls to a ``NodeService``."""

    def __init__(
        self,
        service: NodeService,
        *,
        token: str | None,
        max_batch: int = DEFAULT_MAX_BATCH,
        methods: dict[str, Method] | None = None,
    ) -> None:
        self.service = service
        # None (or empty) refuses every mutating call: there is no open write mode.
        self._token = token.encode() if token else None
        self.max_batch = max_batch
        self.methods = methods if methods is not None else METHODS

    def authorized(self, authorization: str | None) -> bool:
        if self._token is None or not authorization:
            return False
        scheme, _, presented = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(presented.strip().encode(), self._token)

    async def handle(self, body: bytes, authorization: str | None = None) -> Reply:
        try:
            payload = json.loads(body, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            return self._encode(error_response(RpcError(PARSE_ERROR, "parse error: the body is not valid JSON")))
        authorized = self.authorized(authorization)
        if isinstance(payload, list):
            if not payload:
                return self._encode(error_response(RpcError(INVALID_REQUEST, "invalid request: empty batch")))
            if len(payload) > self.max_batch:
                return self._encode(error_response(RpcError(
                    INVALID_REQUEST,
                    f"invalid request: a batch holds at most {self.max_batch} calls, got {len(payload)}",
                    {"reason": "batch_too_large", "max_batch": self.max_batch},
                )))
            replies = []
            for item in payload:
                reply = await self.call(item, authorized)
                if reply is not None:
                    replies.append(reply)
            return self._encode(replies) if replies else Reply(None)
        reply = await self.call(payload, authorized)
        return self._encode(reply) if reply is not None else Reply(None)

    def _encode(self, doc: Any) -> Reply:
        return Reply(json.dumps(doc, separators=(",", ":"), allow_nan=False).encode())

    async def call(self, request: Any, authorized: bool) -> dict[str, Any] | None:
        """Answer one request object; None for a notification."""
        if not isinstance(request, dict):
            return error_response(RpcError(INVALID_REQUEST, "invalid request: a call is a JSON object"))
        id_ = request.get("id")
        is_notification = "id" not in request
        try:
            method = self._check_envelope(request)
        except RpcError as e:
            return error_response(e, id_ if _valid_id(id_) else None)
        started = time.perf_counter()
        label = method.name if method is not None else "unknown"
        try:
            result = await self._invoke(method, request, authorized, request.get("method"))
        except RpcError as e:
            outcome = {UNAUTHORIZED: "unauthorized", SERVER_ERROR: "server_error"}.get(e.code, "client_error")
            RPC_REQUESTS.labels(label, outcome).inc()
            return None if is_notification else error_response(e, id_)
        except Exception:  # never a traceback on the wire
            log.exception("event=rpc_internal_error method=%s", label)
            RPC_REQUESTS.labels(label, "internal_error").inc()
            err = RpcError(INTERNAL_ERROR, "internal error", {"reason": "internal"})
            return None if is_notification else error_response(err, id_)
        finally:
            RPC_SECONDS.labels(label).observe(time.perf_counter() - started)
        RPC_REQUESTS.labels(label, "ok").inc()
        return None if is_notification else {"jsonrpc": "2.0", "result": result, "id": id_}

    def _check_envelope(self, request: dict[str, Any]) -> Method | None:
        if request.get("jsonrpc") != "2.0":
            raise RpcError(INVALID_REQUEST, 'invalid request: "jsonrpc" must be exactly "2.0"')
        if "id" in request and not _valid_id(request["id"]):
            raise RpcError(INVALID_REQUEST, 'invalid request: "id" must be a string, a number or null')
        name = request.get("method")
        if not isinstance(name, str) or not name:
            raise RpcError(INVALID_REQUEST, 'invalid request: "method" must be a non-empty string')
        if "params" in request and not isinstance(request["params"], (dict, list)):
            raise RpcError(INVALID_REQUEST, 'invalid request: "params" must be an object or an array')
        extra = set(request) - {"jsonrpc", "id", "method", "params"}
        if extra:
            raise RpcError(INVALID_REQUEST, f"invalid request: unknown member(s) {', '.join(sorted(extra))}")
        return self.methods.get(name)

    async def _invoke(
        self, method: Method | None, request: dict[str, Any], authorized: bool, name: str
    ) -> Any:
        if method is None:
            raise RpcError(METHOD_NOT_FOUND, f"method not found: {name}", {"reason": "method_not_found"})
        if method.mutating and not authorized:
            raise RpcError(
                UNAUTHORIZED,
                f"unauthorized: {method.name} needs 'Authorization: Bearer <token>' with the node's API token",
                {"reason": "unauthorized"},
            )
        raw = request.get("params", {})
        if isinstance(raw, list):
            if raw:
                raise RpcError(
                    INVALID_PARAMS,
                    "invalid params: pass params by name (a JSON object)",
                    {"reason": "invalid_params", "errors": [{"field": "params", "reason": "by-position params are not supported", "type": "params_type"}]},
                )
            raw = {}
        try:
            params = method.params.model_validate(raw)
        except ValidationError as e:
            raise invalid_params(e) from None
        try:
            result = await getattr(self.service, method.attr)(params)
        except ServiceError as e:
            data = dict(e.data or {})
            data["reason"] = e.reason
            raise RpcError(SERVER_ERROR, e.message, data) from None
        if not isinstance(result, BaseModel):
            result = method.result.model_validate(result)
        # pydantic's JSON writer turns NaN/inf into null: the reply stays valid JSON.
        return json.loads(result.model_dump_json())
