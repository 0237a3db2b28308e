"""Where the evaluate stage's child-process jobs run: here, one after another (`Local`, the default), or fanned
out over a Ray cluster (`RayExecutor`, `toolkit evaluate --executor ray --ray-address HEAD:6379`).

A stage hands every job that is not cached to `fan_out`; each job still runs in a fresh child process
(profiling/harness.py), on whichever node has the CPUs it asks for: a job reserves `threads` CPUs, so on a
node of 2 cores two jobs of 2 threads never run at once. The files a job reads (the variant, the corpus, its
reference's logits, the offline tasks) travel through Ray's object store to a node-local folder that is
deleted after the job, or are read in place when every node mounts the workspace (`shared=True`); what a job
writes (a reference's logits) comes back the same way. Results are cached by the driver under the same
content keys as a local run, so a rerun anywhere reuses finished work. A job whose node dies is recorded as
a crash with Ray's reason; the other jobs complete, and the next run redoes only the missing ones.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, TypeVar

from toolkit.errors import UserError
from toolkit.io import cache_root
from toolkit.pipeline import jobs
from toolkit.profiling.harness import ChildResult, run_child

T = TypeVar("T")


class Executor(Protocol):
    width: int  # how many jobs it runs at once

    def run(self, job: jobs.Job, timeout_s: float, memory_cap_mb: float | None, log: Path,
            returns: Path | None = None) -> ChildResult:
        """Run `job` in a child process; `returns`: a folder the job writes that must end up here."""
        ...


class Local:
    """Today's behaviour: every job in a child process of this machine, one at a time."""

    width = 1

    def run(self, job: jobs.Job, timeout_s: float, memory_cap_mb: float | None, log: Path,
            returns: Path | None = None) -> ChildResult:
        return jobs.run(job, timeout_s, memory_cap_mb, log)


LOCAL = Local()


def fan_out(executor: Executor, calls: list[Callable[[], T]]) -> list[T]:
    """Every call's result, in order; as many at once as the executor runs."""
    if executor.width <= 1 or len(calls) <= 1:
        return [call() for call in calls]
    with ThreadPoolExecutor(min(executor.width, len(calls))) as pool:
        return list(pool.map(lambda call: call(), calls))


def get_executor(name: str, address: str = "127.0.0.1:6379", shared: bool = False) -> Executor:
    if name == "local":
        return LOCAL
    if name == "ray":
        return RayExecutor(address, shared)
    raise UserError(f"unknown executor {name!r} (local, ray)", field="--executor")


class RayExecutor:
    """Jobs as Ray tasks, one CPU per thread they use, on any node of the cluster at `address`."""

    def __init__(self, address: str, shared: bool = False) -> None:
        try:
            import ray
        except ImportError:
            raise UserError("the ray executor needs Ray: pip install 'edgefirst-toolkit[ray]'", field="--executor") from None
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, logging_level="ERROR")
        cpus = [node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")]
        self.largest = int(max(cpus, default=0))
        self.width = max(1, int(sum(cpus)))
        self.shared = shared
        self.task = ray.remote(run_there)

    def run(self, job: jobs.Job, timeout_s: float, memory_cap_mb: float | None, log: Path,
            returns: Path | None = None) -> ChildResult:
        import ray

        if job.threads > self.largest:
            raise UserError(f"no Ray node has the {job.threads} CPUs a job of {job.threads} threads reserves (largest: "
                            f"{self.largest}); set device.threads", field="device.threads")
        inputs = [] if self.shared else needed_files(job)
        blob = ray.put(pack(inputs)) if inputs else None
        ref = self.task.options(num_cpus=job.threads, max_retries=0).remote(
            job.model_dump_json(), inputs, blob, timeout_s, memory_cap_mb, str(returns) if returns and not self.shared else None)
        try:
            status, data, reason, wall_s, log_text, back = ray.get(ref)
        except ray.exceptions.RayError as exc:
            return ChildResult("crash", {}, "Ray: " + " ".join(str(exc).split())[:300], 0.0)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(log_text, encoding="utf-8")
        if back is not None and returns is not None:
            unpack(back, returns)
        return ChildResult(status, data, reason, wall_s)


def needed_files(job: jobs.Job) -> list[str]:
    """The files and folders `job` reads, which a node of another machine must be sent."""
    paths = [job.path]
    if isinstance(job, jobs.MeasureJob):
        paths.append(job.corpus)
        if job.reference is not None and not job.reference.write:
            paths.append(job.reference.dir)
    if isinstance(job, jobs.LmEvalJob):
        paths += job.task_dirs
    return paths


def pack(paths: list[str] | Path) -> bytes:
    """The given files and folders as one tar, the i-th under `i/`; or a folder's contents."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        if isinstance(paths, Path):
            tar.add(paths, arcname=".")
        else:
            for i, path in enumerate(paths):
                tar.add(path, arcname=f"{i}/{Path(path).name}")
    return buffer.getvalue()


def unpack(blob: bytes, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(target, filter="data")
    return target


def rebase(job: dict, moved: dict[str, str]) -> dict:
    """The job with every input path it reads replaced by where this node holds it."""
    job = dict(job, path=moved.get(job["path"], job["path"]))
    if "corpus" in job:
        job["corpus"] = moved.get(job["corpus"], job["corpus"])
    if job.get("reference"):
        job["reference"] = dict(job["reference"], dir=moved.get(job["reference"]["dir"], job["reference"]["dir"]))
    if "task_dirs" in job:
        job["task_dirs"] = [moved.get(d, d) for d in job["task_dirs"]]
        for old in job["task_dirs"]:  # an offline task's YAML names its data file by absolute path
            for yaml in Path(old).glob("*.yaml"):
                text = yaml.read_text(encoding="utf-8")
                for before, after in moved.items():
                    text = text.replace(before, after)
                yaml.write_text(text, encoding="utf-8")
    return job


def run_there(job_json: str, inputs: list[str], blob: bytes | None, timeout_s: float, memory_cap_mb: float | None,
              returns: str | None) -> tuple:
    """On a Ray node: the job in a child process, over the files sent with it; (status, data, reason, wall_s,
    log text, the `returns` folder packed or None)."""
    import ray

    base = cache_root() / "ray-jobs"
    base.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="job-", dir=base)).resolve()
    try:
        job = json.loads(job_json)
        if blob is not None:
            unpack(blob, folder / "in")
            job = rebase(job, {old: str(folder / "in" / str(i) / Path(old).name) for i, old in enumerate(inputs)})
        if returns is not None:
            job["reference"] = dict(job["reference"], dir=str(folder / "out"))
            (folder / "out").mkdir()
        log = folder / "job.log"
        child = run_child(job, timeout_s, memory_cap_mb, log)
        node = ray.get_runtime_context().get_node_id()
        text = f"ran on Ray node {node}\n" + (log.read_text(encoding="utf-8", errors="replace") if log.exists() else "")
        back = pack(folder / "out") if returns is not None and child.status == "ok" else None
        return child.status, child.data, child.reason, child.wall_s, text, back
    finally:
        shutil.rmtree(folder, ignore_errors=True)
