"""`toolkit serve`: the generated LiteLLM router behind a small OpenAI-compatible endpoint.

Edge llama.cpp servers first, with the routing strategy and per-device rpm/tpm limits from
`litellm.yaml`; when no edge deployment can take a request (limits, errors, a dead device), LiteLLM's
fallback sends it to the cloud model. Binds to 127.0.0.1 unless told otherwise; an API key is required
when one is set.
"""

import os
from pathlib import Path
from typing import Any

import yaml
from fastapi import FastAPI, HTTPException, Request

from toolkit.errors import UserError

ROUTER_KEYS = {"routing_strategy", "num_retries", "allowed_fails", "cooldown_time", "fallbacks", "enable_pre_call_checks",
               "timeout", "retry_after"}


def load_router_config(path: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UserError("router config not found", file=path) from exc
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


def create_app(config: dict[str, Any], api_key: str | None) -> FastAPI:
    # no `from __future__ import annotations` here: FastAPI reads these handlers' annotations at runtime
    router = build_router(config)
    app = FastAPI(title="edgefirst router")
    served: dict[str, int] = {}

    def check_key(request: Request) -> None:
        if api_key and request.headers.get("authorization", "") != f"Bearer {api_key}":
            raise HTTPException(status_code=401, detail="invalid API key")

    @app.get("/health")
    async def health() -> dict:
        return {"ok": True, "served": served}

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        check_key(request)
        names = sorted({m["model_name"] for m in config["model_list"]})
        return {"object": "list", "data": [{"id": n, "object": "model"} for n in names]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict:
        check_key(request)
        body = await request.json()
        body.setdefault("model", "edge")
        try:
            response = await router.acompletion(**body)
        except Exception as exc:  # noqa: BLE001 - every routing failure is the client's 503
            raise HTTPException(status_code=503, detail=f"no deployment could answer: {type(exc).__name__}") from exc
        hidden = getattr(response, "_hidden_params", {}) or {}
        where = str(hidden.get("model_id") or hidden.get("api_base") or "unknown")
        served[where] = served.get(where, 0) + 1
        data = response.model_dump()
        data["edgefirst_deployment"] = where
        return data

    return app


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
    check_port_free(host, port)
    api_key = os.environ.get(api_key_env) or None
    uvicorn.run(create_app(config, api_key), host=host, port=port, log_level="warning")
