"""llama.cpp's own binaries as a profiling runtime: what a device deploys (`llama-server`), measured as a
served client sees it, with `llama-bench` on the same file and settings as the yardstick.

- TTFT, prefill and decode: streamed completions from a short-lived `llama-server` on 127.0.0.1 (greedy:
  the top-k 1 sampler alone; no prompt cache; EOS ignored): TTFT is request to first streamed token, inter-token latency the gaps
  between tokens; the server's own timings are the runtime's counters.
- Memory: the server process's peak resident memory (VmHWM), which is what deploying the variant costs.
- llama-bench: pp at every prompt length and tg at the first length's depth, one run after each served repeat
  (paired, so that a drifting machine moves both), every repeat kept.
- GPU offload: `n_gpu_layers` layers, or `auto`: the fewest that meet budget.min_decode_tps (llamacpp_offload.py).

The binaries come from `device.llama_cpp.bin_dir` (passed as EDGEFIRST_LLAMA_CPP_BIN), else PATH, else the
toolkit's own build (`toolkit llama-cpp-build`). Fidelity and lm-eval of GGUF variants stay on the bundled
runtime (they need every logit; llama.cpp's numerics are the same, see tests/test_llamacpp_native.py).
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from toolkit.procs import die_with_parent

IMPORTS: tuple[str, ...] = ()  # a deployment runs llama-server, no Python
ENV_BIN = "EDGEFIRST_LLAMA_CPP_BIN"
TOOLS = ("llama-server", "llama-bench")
READY_TIMEOUT_S = 300.0


def bin_dir() -> Path | None:
    """The folder holding llama-server and llama-bench: EDGEFIRST_LLAMA_CPP_BIN, PATH, the toolkit's build."""
    if configured := os.environ.get(ENV_BIN):
        return Path(configured)
    if found := shutil.which("llama-server"):
        return Path(found).resolve().parent
    from toolkit.runtimes.llamacpp_build import build_dir

    own = build_dir() / "bin"
    return own if own.exists() else None


def binary(name: str) -> str:
    folder = bin_dir()
    if folder is None or not (folder / name).exists():
        raise ImportError(f"no {name} in {folder or 'PATH'}; set device.llama_cpp.bin_dir or run `toolkit llama-cpp-build`")
    return str(folder / name)


def check_installed() -> None:
    for tool in TOOLS:
        binary(tool)


def _version_lines() -> list[str]:
    return _server_output(binary("llama-server"), "--version")


@functools.cache
def _server_output(server: str, flag: str) -> list[str]:
    """What `llama-server FLAG` prints, once per binary: versions(), build_flags() and gpu_devices() share it."""
    out = subprocess.run([server, flag], capture_output=True, text=True, timeout=60)
    return [line.strip() for line in (out.stdout + out.stderr).splitlines() if line.strip()]


def versions() -> dict[str, str]:
    """The build every result depends on, as llama.cpp names it: `b11434 (commit)`."""
    line = next((ln for ln in _version_lines() if ln.startswith("version:")), "version: unknown")
    found = re.search(r"build (\d+), commit ([^)\s]+)", line)
    return {"llama.cpp-native": f"b{found[1]} ({found[2]})" if found else line.split(":", 1)[1].strip()}


def build_flags() -> dict[str, str]:
    """The compiler line and the devices the build can use (GPUs only where it has a GPU backend)."""
    built = next((ln for ln in _version_lines() if ln.startswith("built with")), "")
    return {"llama.cpp-native built with": built.removeprefix("built with").strip(),
            "llama.cpp-native devices": ", ".join(gpu_devices()) or "CPU only"}


def gpu_devices() -> list[str]:
    """`llama-server --list-devices`: the build's offload devices (none for a CPU build)."""
    lines = _server_output(binary("llama-server"), "--list-devices")
    start = next((i for i, ln in enumerate(lines) if ln.startswith("Available devices")), len(lines))
    return [ln for ln in lines[start + 1:] if ":" in ln]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A llama-server on 127.0.0.1 for one variant, started and stopped around the measurement."""

    def __init__(self, path: str, threads: int, n_ctx: int, n_batch: int, layers: int):
        self.port = _free_port()
        cmd = [binary("llama-server"), "-m", path, "--host", "127.0.0.1", "--port", str(self.port),
               "-t", str(threads), "-tb", str(threads), "-c", str(n_ctx), "-b", str(n_batch), "-ub", str(n_batch),
               "-np", "1", "-ngl", str(layers), "--no-webui", "-fit", "off", "--cache-ram", "0"]
        start = time.perf_counter()
        self.log = tempfile.NamedTemporaryFile("w+", prefix="llama-server-", suffix=".log")  # noqa: SIM115 - close()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent())
        self._wait_ready()
        self.load_ms = (time.perf_counter() - start) * 1000

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with code {self.proc.returncode} while loading: {_last_line(self.log.name)}")
            try:
                status, _ = self.request("GET", "/health")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"llama-server not ready within {READY_TIMEOUT_S:g} s")

    def request(self, method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        try:
            conn.request(method, url, body=json.dumps(body) if body is not None else None,
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"{}")
        finally:
            conn.close()

    def tokenize(self, text: str) -> list[int]:
        return self.request("POST", "/tokenize", {"content": text, "add_special": False})[1]["tokens"]

    def stream(self, prompt: list[int], n_predict: int) -> tuple[float, list[tuple[float, int]], dict]:
        """Greedy completion, streamed: the request's start, (arrival, tokens so far) per event and the server's
        timings, in seconds. An event can carry several tokens: the server holds back a token that ends inside
        a UTF-8 character until the character is whole, as every client sees."""
        # greedy as every runtime is profiled: top-k 1 alone, not the server's default chain of nine samplers
        # (penalties, DRY, top-p, ...), which cost SmolLM2 7-10% of its decode speed
        body = {"prompt": prompt, "n_predict": n_predict, "stream": True, "cache_prompt": False, "ignore_eos": True,
                "samplers": ["top_k"], "top_k": 1}
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        events, timings, seen = [], {}, 0
        start = time.perf_counter()
        conn.request("POST", "/completion", body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"llama-server answered {response.status}: {response.read()[:300]!r}")
        for raw in response:
            now = time.perf_counter()
            if not raw.startswith(b"data: "):
                continue
            event = json.loads(raw[6:])
            if event.get("tokens_predicted", 0) > seen:
                seen = event["tokens_predicted"]
                events.append((now, seen))
            if event.get("stop"):
                timings = event.get("timings", {})
                break
        conn.close()
        if seen != n_predict:
            raise RuntimeError(f"llama-server predicted {seen} tokens, not {n_predict}")
        return start, events, timings

    def peak_rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status", encoding="ascii") as status:
            return next(int(ln.split()[1]) / 1024 for ln in status if ln.startswith("VmHWM:"))

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.seek(0)
        sys.stdout.write(self.log.read())  # into the profile's log
        self.log.close()


def _last_line(path: str) -> str:
    lines = [ln for ln in Path(path).read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def profile(job: dict, energy) -> dict:
    """The worker's profile result, measured through llama-server, with llama-bench's figures beside it."""
    layers, offload = offload_layers(job)
    server = Server(job["path"], job["threads"], job["n_ctx"], job["n_batch"], layers)
    try:
        result = served_runs(server, job, energy, layers)
        result |= {"load_ms": server.load_ms, "peak_rss_mb": server.peak_rss_mb()}
    finally:
        server.close()
    return result | {"deploy_rss_mb": result["peak_rss_mb"], "gpu_layers": layers, "offload": offload}  # the server is the deployment


def served_runs(server: Server, job: dict, energy, layers: int) -> dict:
    """`repeats` rounds, each: a streamed prefill per prompt length, llama-bench's pp at those lengths, a
    streamed decode, llama-bench's tg at the same depth. Pairing each served repeat with a llama-bench one
    taken right after keeps the two comparable on a machine whose speed drifts."""
    tokens = server.tokenize(Path(job["corpus"]).read_text(encoding="utf-8"))
    lengths, n_decode = job["prompt_lengths"], job["decode_tokens"]
    if len(tokens) < max(lengths):
        raise ValueError(f"corpus has {len(tokens)} tokens, fewer than the longest prompt {max(lengths)}")
    for _ in range(job["warmup"]):
        server.stream(tokens[: lengths[0]], min(8, n_decode))
    ttft = {n: [] for n in lengths}
    prefill = {n: [] for n in lengths}
    decode_tps, itl, runtime_decode = [], [], []
    deepest = max(lengths)  # decode after the longest prompt, as the bundled runtime does (profiling/worker.py)
    bench = {"build": "", "depth": deepest, "prefill_tps": {str(n): [] for n in lengths}, "decode_tps": []}
    for _ in range(job["repeats"]):
        for length in lengths:
            mark = energy.mark()
            start, events, timings = server.stream(tokens[:length], 1)
            energy.window("prefill", length, mark, energy.mark())
            ttft[length].append((events[0][0] - start) * 1000)
            if timings.get("prompt_ms"):
                prefill[length].append(timings["prompt_n"] / timings["prompt_ms"] * 1000)
        for test in llama_bench(job, layers, ["-p", ",".join(map(str, lengths)), "-n", "0"]):
            bench["prefill_tps"][str(test["n_prompt"])] += test["samples_ts"]
        mark = energy.mark()
        _, events, timings = server.stream(tokens[:deepest], n_decode + 1)
        energy.window("decode", n_decode, mark, energy.mark())
        itl.extend(gaps(events))
        (first, before), (last, after) = events[0], events[-1]
        decode_tps.append((after - before) / (last - first))
        if timings.get("predicted_ms"):
            runtime_decode.append(timings["predicted_n"] / timings["predicted_ms"] * 1000)
        [tg] = llama_bench(job, layers, ["-p", "0", "-n", str(n_decode), "-d", str(deepest)])
        bench["decode_tps"] += tg["samples_ts"]
        bench["build"] = f"b{tg['build_number']} ({tg['build_commit']})"
    prompts = [{"prompt_tokens": n, "ttft_ms": ttft[n], "runtime_prefill_tps": prefill[n]} for n in lengths]
    return {"prompts": prompts, "decode_tps": decode_tps, "itl_ms": itl, "runtime_decode_tps": runtime_decode,
            "decode_context": deepest, "llama_bench": bench}


def offload_layers(job: dict) -> tuple[int, str | None]:
    """Layers to put on the GPU (device.llama_cpp.n_gpu_layers), and for auto how they were chosen."""
    asked = job.get("n_gpu_layers", 0)
    if not asked:
        return 0, None
    devices = gpu_devices()
    if asked != "auto":
        if not devices:
            raise RuntimeError(f"device.llama_cpp.n_gpu_layers is {asked}, but the llama.cpp build in {bin_dir()} has "
                               "no GPU backend; set it to 0 or use a CUDA, Vulkan or Metal build")
        return int(asked), None
    if not devices:
        return 0, "auto: this llama.cpp build has no GPU backend, so the CPU alone"
    from toolkit.formats.gguf_header import read_header
    from toolkit.runtimes.llamacpp_offload import fewest_layers

    fields = read_header(job["path"]).fields
    n_layers = int(fields[f"{fields['general.architecture']}.block_count"]) + 1  # the output layer too

    def tg(layers: int) -> list[float]:
        args = ["-p", "0", "-n", str(job["decode_tokens"]), "-d", str(max(job["prompt_lengths"]))]
        return llama_bench(job, layers, args, job["repeats"])[0]["samples_ts"]

    layers, tried, why = fewest_layers(tg, n_layers, job.get("decode_target"))
    return layers, f"auto on {', '.join(devices)}: {why}; p10 tg per layer count: " + ", ".join(
        f"{n}: {v:.1f}" for n, v in sorted(tried.items()))


def gaps(events: list[tuple[float, int]]) -> list[float]:
    """Inter-token latency, ms, after the first event: an event's gap shared by the tokens it brought."""
    out = []
    for (t0, n0), (t1, n1) in zip(events, events[1:], strict=False):
        out += [(t1 - t0) * 1000 / (n1 - n0)] * (n1 - n0)
    return out


def llama_bench(job: dict, layers: int, tests: list[str], repeats: int = 1) -> list[dict]:
    """llama-bench's JSON for `tests`, on the same file, threads and batch as the server."""
    cmd = [binary("llama-bench"), "-m", job["path"], "-t", str(job["threads"]), "-b", str(job["n_batch"]),
           "-ub", str(job["n_batch"]), "-ngl", str(layers), "-r", str(repeats), "-o", "json", *tests]
    return _bench(cmd)


def _bench(cmd: list[str]) -> list[dict]:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"llama-bench failed (exit {out.returncode}): {(out.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(out.stdout)
