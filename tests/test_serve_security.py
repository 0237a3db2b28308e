"""`toolkit serve` on loopback, with two cloud STAND-INs and no model: the provider stub that `litellm.yaml`
names, and a second stub that plays a host a client would like to send the provider key to. A client may
set only the OpenAI chat fields; `api_base`, `base_url`, `api_key` and every LiteLLM-only parameter are a 400
and never reach LiteLLM. Streaming works end to end. Traffic goes to 127.0.0.1 only, bounded in count.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
pytest.importorskip("litellm")

from tests.loopback import free_port, wait_http  # noqa: E402
from toolkit.serve import ChatRequest, RequestRefused, is_loopback, key_matches, parse_request  # noqa: E402

pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])  # the router and the stand-ins on loopback; nothing else
ROOT = Path(__file__).resolve().parent.parent
PROVIDER_KEY = "sk-provider-secret-0123"
CLIENT_KEY = "client-key"
FORBIDDEN = ["api_base", "base_url", "api_key", "custom_llm_provider", "mock_response", "metadata", "litellm_params",
             "extra_body", "extra_headers", "headers", "api_version", "timeout", "fallbacks", "num_retries",
             "litellm_logging_obj", "organization", "deployment_id", "input_cost_per_token", "proxy_server_request"]
ALLOWED = set(ChatRequest.model_fields)
HELLO = [{"role": "user", "content": "Say hello."}]






def _post(url: str, body: dict | bytes, key: str | None = CLIENT_KEY) -> tuple[int, dict, dict]:
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=30) as response:
            return response.status, json.load(response), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}"), dict(exc.headers)


def _count(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/count", timeout=10) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def router(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    ports = {"provider": free_port(), "attacker": free_port(), "router": free_port()}
    config = {
        "model_list": [
            {"model_name": "edge", "litellm_params": {"model": "openai/stand-in", "api_key": "os.environ/PROVIDER_API_KEY",
                                                      "api_base": f"http://127.0.0.1:{ports['provider']}/v1"}},
            {"model_name": "cloud", "litellm_params": {"model": "openai/stand-in", "api_key": "os.environ/PROVIDER_API_KEY",
                                                       "api_base": f"http://127.0.0.1:{ports['provider']}/v1"}},
        ],
        "router_settings": {"num_retries": 0, "fallbacks": [{"edge": ["cloud"]}]},
    }
    path = tmp / "litellm.yaml"
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ, EDGEFIRST_API_KEY=CLIENT_KEY, PROVIDER_API_KEY=PROVIDER_KEY, LITELLM_LOCAL_MODEL_COST_MAP="True")
    procs = [subprocess.Popen([sys.executable, "-m", "tests.cloud_standin", str(ports[name])], cwd=ROOT)
             for name in ("provider", "attacker")]
    log = (tmp / "router.log").open("w")  # noqa: SIM115 - closed below
    procs.append(subprocess.Popen([sys.executable, "-m", "toolkit.cli", "serve", str(path), "--port", str(ports["router"])],
                                  env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        for name in ("provider", "attacker"):
            wait_http(f"http://127.0.0.1:{ports[name]}/count")
        wait_http(f"http://127.0.0.1:{ports['router']}/health", timeout=120)
        yield ports, path
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


def test_client_cannot_redirect_the_provider_key(router):
    ports, _ = router
    url = f"http://127.0.0.1:{ports['router']}/v1/chat/completions"
    attacker = f"http://127.0.0.1:{ports['attacker']}/v1"
    before = _count(ports["provider"])["requests"]
    for field in FORBIDDEN:
        value = attacker if field in ("api_base", "base_url") else ("sk-client" if field == "api_key" else {"x": attacker})
        code, body, _ = _post(url, {"model": "edge", "messages": HELLO, "max_tokens": 4, field: value})
        assert code == 400, (field, code, body)
        assert f"'{field}'" in body["error"]["message"], body
    nested = {"model": "edge", "max_tokens": 4, "messages": [{"role": "user", "content": "hi", "api_base": attacker}]}
    code, body, _ = _post(url, nested)
    assert code == 400 and "messages.0.api_base" in body["error"]["message"], body
    for _ in range(3):
        code, body, headers = _post(url, {"model": "edge", "messages": HELLO, "max_tokens": 4, "temperature": 0, "seed": 1})
        assert code == 200, body
        assert body["choices"][0]["message"]["content"] == "[cloud stand-in] answered"
        assert headers.get("x-edgefirst-deployment")
    provider, stolen = _count(ports["provider"]), _count(ports["attacker"])
    assert stolen["requests"] == 0 and stolen["auth"] == []  # the second stub saw nothing, least of all the key
    assert provider["requests"] - before == 3  # the provider saw exactly the accepted requests
    assert provider["auth"] == [f"Bearer {PROVIDER_KEY}"]


def test_streaming_end_to_end(router):
    ports, _ = router
    url = f"http://127.0.0.1:{ports['router']}/v1/chat/completions"
    body = json.dumps({"model": "edge", "messages": HELLO, "max_tokens": 4, "stream": True}).encode()
    request = urllib.request.Request(url, body, {"content-type": "application/json", "authorization": f"Bearer {CLIENT_KEY}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-edgefirst-deployment"]
        lines = [ln.decode().strip() for ln in response if ln.strip()]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln.removeprefix("data: ")) for ln in lines[:-1]]
    assert len(chunks) >= 2, lines  # really streamed, not one blob
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    assert text == "[cloud stand-in] answered"


def test_keys_sizes_and_models_are_checked(router):
    ports, _ = router
    url = f"http://127.0.0.1:{ports['router']}/v1/chat/completions"
    ok = {"model": "edge", "messages": HELLO, "max_tokens": 4}
    assert _post(url, ok, key=None)[0] == 401
    assert _post(url, ok, key=CLIENT_KEY + "x")[0] == 401
    code, body, _ = _post(url, {**ok, "model": "openai/gpt-4"})
    assert code == 400 and "unknown model" in body["error"]["message"]
    code, _, _ = _post(url, {**ok, "messages": [{"role": "user", "content": "x" * (2 << 20)}]})
    assert code == 413
    assert _post(url, b"not json")[0] == 400


def test_serve_refuses_a_public_address_without_a_key(router, tmp_path):
    _, path = router
    env = {k: v for k, v in os.environ.items() if k != "EDGEFIRST_API_KEY"}
    done = subprocess.run([sys.executable, "-m", "toolkit.cli", "serve", str(path), "--host", "0.0.0.0", "--port", str(free_port())],
                          env=env, capture_output=True, text=True, timeout=120)
    out = done.stdout.strip()
    assert done.returncode == 2, out + done.stderr
    assert len(out.splitlines()) == 1 and "refusing to serve on 0.0.0.0 without an API key" in out and "EDGEFIRST_API_KEY" in out


def test_loopback_and_key_helpers():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
    assert key_matches("Bearer k", "k") and not key_matches("Bearer K", "k") and not key_matches("", "k")
    assert key_matches("", None)


@settings(max_examples=200, deadline=None)
@given(extra=st.dictionaries(st.text(min_size=1, max_size=24), st.one_of(st.text(), st.integers(), st.none()), max_size=4))
def test_only_openai_fields_ever_reach_the_router(extra):
    """Whatever a client adds, what goes to `Router.acompletion` is a subset of the OpenAI chat fields."""
    body = {"model": "edge", "messages": HELLO, **extra}
    try:
        kwargs = parse_request(json.dumps(body).encode(), {"edge", "cloud"}, "edge")
    except RequestRefused as exc:
        assert exc.status == 400
        assert any(f"'{k}'" in exc.message for k in extra), exc.message  # the refusal names a field the client added
        return
    assert set(kwargs) <= ALLOWED
    assert set(extra) <= ALLOWED  # accepted only because every added key is an OpenAI field
