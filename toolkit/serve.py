"""`toolkit serve`: the generated LiteLLM router behind a small OpenAI-compatible endpoint.

Edge llama.cpp servers first, with the routing strategy and per-device rpm/tpm limits from
`litellm.yaml`; when no edge deployment can take a request (limits, errors, a dead device), LiteLLM's
fallback sends it to the cloud model.

The request surface is closed: a client may set only the OpenAI chat-completion fields in `ChatRequest`.
Anything else (`api_base`, `base_url`, `api_key`, `custom_llm_provider`, `mock_response`, `metadata`, any
LiteLLM-only parameter) is refused with a 400 naming the field, so a client can never redirect a request,
and the provider key from `litellm.yaml` with it, to a host of its choosing. Binds to 127.0.0.1 unless told
otherwise, and refuses any other address without an API key.
"""

import asyncio
import hmac
import ipaddress
import json
import os
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from toolkit.config import read_yaml
from toolkit.errors import UserError

ROUTER_KEYS = {"routing_strategy", "num_retries", "allowed_fails", "cooldown_time", "fallbacks", "enable_pre_call_checks",
               "timeout", "retry_after"}
MAX_BODY_BYTES = 1 << 20  # 1 MiB: far above any chat request an SLM can take
DRAIN_FACTOR = 8  # an oversized body is drained up to this many times the limit before the 413
REQUEST_TIMEOUT_S = 120.0  # past this the client gets a 503, never a hang
DEPLOYMENT_HEADER = "x-edgefirst-deployment"


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Message(_Closed):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class StreamOptions(_Closed):
    include_usage: bool = False


class ChatRequest(_Closed):
    """The OpenAI chat-completion fields the router forwards; any other field is a 400."""

    messages: list[Message] = Field(min_length=1)
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(default=None, ge=1, le=8)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None


class RequestRefused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def parse_request(raw: bytes, models: set[str], default_model: str) -> dict[str, Any]:
    """Validate a client's body; return exactly the keyword arguments for `Router.acompletion`."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestRefused(400, f"the body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise RequestRefused(400, "the body must be a JSON object")
    try:
        request = ChatRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        what = "is not an accepted field" if first["type"] == "extra_forbidden" else first["msg"]
        raise RequestRefused(400, f"field '{where}' {what}") from exc
    kwargs = request.model_dump(exclude_none=True, exclude_defaults=True)
    kwargs["messages"] = [m.model_dump(exclude_none=True) for m in request.messages]
    kwargs["model"] = request.model or default_model
    if kwargs["model"] not in models:
        raise RequestRefused(400, f"field 'model': unknown model {kwargs['model']!r} (served: {', '.join(sorted(models))})")
    if request.stream:
        kwargs["stream"] = True
    return kwargs


def load_router_config(path: Path) -> dict[str, Any]:
    config = read_yaml(path, "router config")
    if not isinstance(config, dict) or not config.get("model_list"):
        raise UserError("a router config needs a model_list", file=path, field="model_list")
    return config


def _resolve_env(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("os.environ/"):
        return os.environ.get(value.removeprefix("os.environ/"), "")
    if isinstance(value, dict):
        return {k: _resolve_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_env(v) for v in value]
    return value


def build_router(config: dict[str, Any]):
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price-map download at import
    from litellm import Router

    settings = {k: v for k, v in (config.get("router_settings") or {}).items() if k in ROUTER_KEYS}
    model_list = _resolve_env(config["model_list"])
    for deployment in model_list:  # LiteLLM reads limits at the deployment's top level
        params = deployment.get("litellm_params", {})
        for limit in ("rpm", "tpm"):
            if limit in params:
                deployment.setdefault(limit, params[limit])
    return Router(model_list=model_list, **settings)


def key_matches(header: str, api_key: str | None) -> bool:
    """Constant-time check of an `Authorization: Bearer KEY` header; no key configured lets all in."""
    if not api_key:
        return True
    return hmac.compare_digest(header.encode(), f"Bearer {api_key}".encode())


async def _read_limited(request: Request, limit: int) -> bytes:
    """The body, or a 413 once it passes `limit`. An oversized body is read on (and dropped) up to DRAIN_FACTOR x
    the limit before the answer, so that an ordinary client still sending it gets the 413, not a broken pipe."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit * DRAIN_FACTOR:
        raise RequestRefused(413, f"the body is larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit * DRAIN_FACTOR:
            break
        if size <= limit:
            chunks.append(chunk)
    if size > limit:
        raise RequestRefused(413, f"the body is larger than {limit} bytes")
    return b"".join(chunks)


def _deployment(response: Any) -> str:
    hidden = getattr(response, "_hidden_params", {}) or {}
    return str(hidden.get("model_id") or hidden.get("api_base") or "unknown")


def _error(status: int, message: str) -> JSONResponse:
    kind = {400: "invalid_request_error", 401: "authentication_error", 413: "invalid_request_error"}.get(status, "service_unavailable")
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)


def create_app(config: dict[str, Any], api_key: str | None, router: Any = None, max_body_bytes: int = MAX_BODY_BYTES,
               timeout_s: float = REQUEST_TIMEOUT_S) -> FastAPI:
    # no `from __future__ import annotations` here: FastAPI reads these handlers' annotations at runtime
    router = router if router is not None else build_router(config)
    app = FastAPI(title="edgefirst router")
    served: dict[str, int] = {}
    names = {m["model_name"] for m in config["model_list"]}
    default_model = "edge" if "edge" in names else config["model_list"][0]["model_name"]

    def count(where: str) -> None:
        served[where] = served.get(where, 0) + 1

    @app.get("/health")
    async def health() -> dict:
        return {"ok": True, "served": served}

    @app.get("/v1/models")
    async def models(request: Request):
        if not key_matches(request.headers.get("authorization", ""), api_key):
            return _error(401, "invalid API key")
        return {"object": "list", "data": [{"id": n, "object": "model"} for n in sorted(names)]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        if not key_matches(request.headers.get("authorization", ""), api_key):
            return _error(401, "invalid API key")
        try:
            kwargs = parse_request(await _read_limited(request, max_body_bytes), names, default_model)
            response = await asyncio.wait_for(router.acompletion(**kwargs), timeout_s)
        except RequestRefused as exc:
            return _error(exc.status, exc.message)
        except TimeoutError:
            return _error(503, f"no deployment answered within {timeout_s:g} s")
        except Exception as exc:  # noqa: BLE001 - every routing failure is the client's 503
            return _error(503, f"no deployment could answer: {type(exc).__name__}")
        where = _deployment(response)
        count(where)
        headers = {DEPLOYMENT_HEADER: where}
        if kwargs.get("stream"):
            return StreamingResponse(_sse(response), media_type="text/event-stream", headers=headers)
        data = response.model_dump()
        data["edgefirst_deployment"] = where
        return JSONResponse(data, headers=headers)

    return app


async def _sse(stream: Any):
    """Server-sent events from LiteLLM's own stream wrapper, closed by `data: [DONE]` as OpenAI does."""
    try:
        async for chunk in stream:
            yield f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"
    except Exception as exc:  # noqa: BLE001 - the status line is gone; say it in the stream
        yield f"data: {json.dumps({'error': {'message': f'stream failed: {type(exc).__name__}', 'type': 'service_unavailable'}})}\n\n"
    yield "data: [DONE]\n\n"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_port_free(host: str, port: int) -> None:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port", field="--port") from exc


def serve(config_path: Path, host: str, port: int, api_key_env: str) -> None:
    import uvicorn

    config = load_router_config(config_path)
    api_key = os.environ.get(api_key_env) or None
    if api_key is None and not is_loopback(host):
        raise UserError(f"refusing to serve on {host} without an API key: set {api_key_env} "
                        f"(for example `export {api_key_env}=$(openssl rand -hex 24)`) or bind 127.0.0.1", field="--host")
    check_port_free(host, port)
    uvicorn.run(create_app(config, api_key), host=host, port=port, log_level="warning")
