"""The jobs the stages hand to a child process (profiling/worker.py), and the results that come back.

Plain typed data both ways: the parent builds a job model, the worker reads it as JSON, and the parent
validates the worker's answer into a result model before anything is cached.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from toolkit.formats.files import serving_context
from toolkit.pipeline.workspace import llama_cpp_bin, threads
from toolkit.profiling.harness import ChildResult, run_child
from toolkit.recipe import Recipe
from toolkit.records import Variant
from toolkit.runtimes import get_runtime


class Job(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["profile", "perplexity", "lm_eval"]
    runtime_module: str  # imported in the child only
    path: str  # the variant's file or folder
    threads: int


class ReferenceLogits(BaseModel):
    dir: str  # where the reference's tokens and logits are stored
    write: bool  # True for the reference itself, which writes them


class MeasureJob(Job):
    """Profile (timings, memory, energy) or fidelity (perplexity, KL) of one variant."""

    n_ctx: int
    n_batch: int
    corpus: str
    prompt_lengths: list[int]
    decode_tokens: int
    warmup: int
    repeats: int
    ctx: int
    chunks: int
    reference: ReferenceLogits | None = None
    stop_over: dict[str, float] | None = None  # fidelity: stop once a figure is sure to exceed its limit (staged search)
    energy_meter: str = "auto"  # device.energy_meter (profiling/meters)
    power: dict[str, float | str] | None = None  # device.power, for the power-model fallback
    profiler: Literal["session", "module"] = "session"  # the runtime's Runtime.profiler
    llama_cpp_bin: str | None = None  # device.llama_cpp.bin_dir, for the native llama.cpp runtime
    n_gpu_layers: int | Literal["auto"] = 0
    decode_target: float | None = None  # budget.min_decode_tps, for n_gpu_layers: auto


class LmEvalJob(Job):
    tasks: list[str]
    task_dirs: list[str]  # folders of the tasks' YAML: the offline tasks', and lm-eval's that hold its own tasks
    stock_tasks: bool  # some task is one of lm-eval's own: its data may come from the hub
    all_stock: bool = False  # index every task lm-eval ships (9-17 s) rather than the folders above
    metrics: list[str]  # per task, the metric reported
    limit: int | None
    max_length: int
    batch_size: int
    backend: Literal["session", "hflm"]  # the runtime's Session, or lm-eval's own HF class (PyTorch)


class Result(BaseModel):
    model_config = ConfigDict(extra="ignore")  # the worker adds bookkeeping (ok, baseline memory, ...)


class PromptResult(Result):
    prompt_tokens: int
    ttft_ms: list[float]
    runtime_prefill_tps: list[float] = []


class ProfileResult(Result):
    prompts: list[PromptResult]
    decode_tps: list[float]
    itl_ms: list[float]
    runtime_decode_tps: list[float] = []
    decode_context: int | None = None  # prompt tokens before the timed decodes
    rapl_watts: list[float] = []
    load_ms: float
    peak_rss_mb: float
    deploy_rss_mb: float | None = None
    energy: dict | None = None  # meters.sampler.Recorder.result(): source, idle power, every window
    llama_bench: dict | None = None  # llamacpp_native.llama_bench(): llama-bench's samples
    gpu_layers: int | None = None  # native llama.cpp: the layers it ran on the GPU
    offload: str | None = None  # and how that number was chosen


class FidelityResult(Result):
    chunks: int
    tokens_scored: int
    bytes_scored: int
    perplexity: float
    bits_per_byte: float
    nll_stderr: float
    kl_mean: float | None = None
    kl_p99: float | None = None
    top1_agreement: float | None = None
    lower_bounds: dict[str, float] | None = None  # set when scoring stopped early (quality.fidelity.perplexity)


class TaskScore(BaseModel):
    metric: str
    filter: str
    value: float
    stderr: float | None
    n: int | None
    items: list[float] = []  # each item's score, in doc id order


class LmEvalResult(Result):
    tasks: dict[str, TaskScore]
    lm_eval_version: str


def measure_job(recipe: Recipe, variant: Variant, kind: Literal["profile", "perplexity"], corpus: Path,
                reference: ReferenceLogits | None = None, runtime: str | None = None) -> MeasureJob:
    """The job for `variant` in its own runtime, or in `runtime` (one that runs the same format)."""
    dev = recipe.device
    longest = max(max(dev.prompt_lengths), recipe.quality.ctx)
    chosen = get_runtime(runtime or variant.runtime)
    return MeasureJob(
        kind=kind, runtime_module=chosen.module, profiler=chosen.profiler, n_gpu_layers=dev.llama_cpp.n_gpu_layers,
        decode_target=recipe.budget.min_decode_tps,
        llama_cpp_bin=llama_cpp_bin(recipe), path=variant.path, threads=threads(recipe),
        n_ctx=profile_context(recipe, variant) if kind == "profile" else fidelity_context(recipe),
        n_batch=longest, corpus=str(corpus), prompt_lengths=dev.prompt_lengths, decode_tokens=dev.decode_tokens,
        warmup=dev.warmup, repeats=dev.repeats, ctx=recipe.quality.ctx, chunks=recipe.quality.chunks, reference=reference,
        energy_meter=dev.energy_meter, power=dev.power.model_dump() if dev.power else None,
    )


def fidelity_context(recipe: Recipe) -> int:
    """Room for the longest prompt and the decode after it, or for one scoring window."""
    return max(max(recipe.device.prompt_lengths) + recipe.device.decode_tokens + 16, recipe.quality.ctx)


def profile_context(recipe: Recipe, variant: Variant) -> int:
    """The context a profile opens the runtime with: the one `toolkit export` and `toolkit deploy` serve the
    budget's response shape at (more when the prompts need it), so its memory holds that server's KV cache."""
    trained = variant.details.get("context_length")
    serving = serving_context(recipe.response_prompt_tokens, recipe.budget.output_tokens, int(trained) if trained else None)
    return max(fidelity_context(recipe), serving)


def run(job: Job, timeout_s: float, memory_cap_mb: float | None, log: Path) -> ChildResult:
    """Run `job` in a fresh child process (timeout, memory cap, log kept)."""
    return run_child(job.model_dump(mode="json"), timeout_s, memory_cap_mb, log)
