"""Where compress builds and the evaluate stage's child-process jobs run: here (`Local`, the default), or over a
Ray cluster (`RayExecutor`, `toolkit evaluate --executor ray --ray-address HEAD:6379`).

A stage hands every job that is not cached to `fan_out`; each job runs in a fresh child process
(profiling/harness.py) on a node with the CPUs it reserves (`threads`: two 2-thread jobs never share 2 cores).
A job's inputs (the variant, the corpus, its reference's logits, the offline tasks) travel through Ray's object
store to a node-local folder deleted after the job, or are read in place when every node mounts the workspace
(`shared=True`); what it writes (a reference's logits) comes back the same way. The driver caches results
under a local run's content keys, so a rerun anywhere reuses finished work. A job whose node dies is recorded
as a crash with Ray's reason; the others complete, and the next run redoes only the missing ones.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, TypeVar

from toolkit.errors import UserError
from toolkit.io import cache_root, content_hash, ensure_dir, temp_prefix
from toolkit.pipeline import jobs
from toolkit.pipeline.build import Built, build_candidate, not_built
from toolkit.pipeline.local import LOCAL
from toolkit.pipeline.workspace import threads
from toolkit.profiling.harness import ChildResult, run_child
from toolkit.recipe import Recipe
from toolkit.records import BuildFailure, Variant

T = TypeVar("T")


class Executor(Protocol):
    width: int  # how many jobs it runs at once

    def run(self, job: jobs.Job, timeout_s: float, memory_cap_mb: float | None, log: Path,
            returns: Path | None = None) -> ChildResult:
        """Run `job` in a child process; `returns`: a folder the job writes that must end up here."""

    def build(self, recipe: Recipe, index: int, ws: Path, step: Callable[[str], None]) -> Built:
        """Every variant of the recipe's `index`-th candidate, its files in `ws`."""

    def build_width(self, recipe: Recipe) -> int: ...  # how many candidates `build` builds at once

    def for_jobs(self, recipe: Recipe, variants: list[Variant]) -> Executor: ...  # sized for these variants' jobs


def fan_out(executor: Executor, calls: list[Callable[[], T]], width: int | None = None) -> list[T]:
    """Every call's result, in order; as many at once as the executor runs (or `width`)."""
    if (width := width or executor.width) <= 1 or len(calls) <= 1:
        return [call() for call in calls]
    with ThreadPoolExecutor(min(width, len(calls))) as pool:
        return list(pool.map(lambda call: call(), calls))


def get_executor(name: str, address: str = "127.0.0.1:6379", shared: bool = False) -> Executor:
    if name == "local":
        return LOCAL
    if name == "ray":
        return RayExecutor(address, shared)
    raise UserError(f"unknown executor {name!r} (local, ray)", field="--executor")


def connect(address: str) -> None:
    """Attach this process to the Ray cluster at `address`. A loopback address stays on loopback: Ray would
    otherwise rewrite 127.0.0.1 to this machine's address and wait for a head that is not there."""
    if address.rsplit(":", 1)[0] in ("127.0.0.1", "localhost", "[::1]"):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # read when ray is imported
    try:
        import ray
    except ImportError:
        raise UserError("Ray is not installed: pip install 'edgefirst-toolkit[ray]'", field="--ray-address") from None
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, logging_level="ERROR")


class RayExecutor:
    """Jobs as Ray tasks, one CPU per thread they use, on any node of the cluster at `address`."""

    def __init__(self, address: str, shared: bool = False) -> None:
        connect(address)
        import ray

        cpus = [node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")]
        self.largest = int(max(cpus, default=0))
        self.width, self.shared = max(1, int(sum(cpus))), shared
        self.task, self.build_task = ray.remote(run_there), ray.remote(build_there)

    def run(self, job: jobs.Job, timeout_s: float, memory_cap_mb: float | None, log: Path,
            returns: Path | None = None) -> ChildResult:
        import ray

        self._check_fits(job.threads)
        inputs = [] if self.shared else needed_files(job)
        blob = put(pack(inputs), "--executor") if inputs else None
        ref = self.task.options(num_cpus=job.threads, max_retries=0).remote(
            job.model_dump_json(), inputs, blob, timeout_s, memory_cap_mb, str(returns) if returns and not self.shared else None)
        try:
            status, data, reason, wall_s, log_text, back = ray.get(ref)
        except ray.exceptions.RayError as exc:
            return ChildResult("crash", {}, "Ray: " + ray_reason(exc), 0.0)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(log_text, encoding="utf-8")
        if back is not None and returns is not None:
            unpack(back, returns)
        return ChildResult(status, data, reason, wall_s)

    def _check_fits(self, cpus: int) -> None:
        """A job reserving more CPUs than any node has would wait forever: say so instead."""
        if cpus > self.largest:
            raise UserError(f"no Ray node has the {cpus} CPUs a job of {cpus} threads reserves (largest: "
                            f"{self.largest}); set device.threads", field="device.threads")

    def build(self, recipe: Recipe, index: int, ws: Path, step: Callable[[str], None]) -> Built:
        """The candidate's variants built on a node (in its own cache, or in `ws` when shared), their files
        streamed back one variant at a time into `ws/variants`."""
        import ray

        candidate = recipe.candidates[index]
        step(f"{candidate.name or candidate.model} on Ray")
        absolute = recipe.model_copy(update={"workspace": str(ws)})
        self._check_fits(threads(recipe))
        stream = self.build_task.options(num_cpus=threads(recipe), max_retries=0, num_returns="streaming").remote(
            absolute.model_dump_json(), str(recipe.path or ""), index, self.shared)
        try:
            head = json.loads(ray.get(next(stream)))
            variants = [Variant.model_validate(v) for v in head["variants"]]
            for variant in variants if not self.shared else []:
                name, inner = head["units"][variant.id]
                variant.path = str(receive(ray.get(next(stream)), ws / "variants", name) / inner)
        except ray.exceptions.RayError as exc:
            return [], not_built(recipe, candidate, "Ray: " + ray_reason(exc))
        return variants, [BuildFailure.model_validate(f) for f in head["failed"]]

    def build_width(self, recipe: Recipe) -> int:
        return self.width

    def for_jobs(self, recipe: Recipe, variants: list[Variant]) -> RayExecutor:
        return self


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


def tar_bytes(entries: list[tuple[str | Path, str]]) -> bytes:
    """Files and folders as one in-memory tar, each (path, name in the tar)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path, arcname in entries:
            tar.add(path, arcname=arcname)
    return buffer.getvalue()


def pack(paths: list[str] | Path) -> bytes:
    """The given files and folders as one tar, the i-th under `i/`; or a folder's contents."""
    if isinstance(paths, Path):
        return tar_bytes([(paths, ".")])
    return tar_bytes([(path, f"{i}/{Path(path).name}") for i, path in enumerate(paths)])


def unpack(blob: bytes, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(target, filter="data")
    return target


def put(blob: bytes, field: str):
    """`blob` in Ray's object store, or a one-line error saying why it does not fit."""
    import ray

    try:
        return ray.put(blob)
    except (ray.exceptions.ObjectStoreFullError, ray.exceptions.OutOfDiskError) as exc:
        raise UserError(f"the files to ship ({len(blob) / 2**20:.0f} MiB) do not fit this node's Ray object store "
                        f"({type(exc).__name__}): start Ray with a larger --object-store-memory, free disk, or give "
                        "--shared-workspace", field=field) from None


def ray_reason(exc: Exception) -> str:
    """A Ray error as one line of at most 300 characters."""
    return " ".join(str(exc).split())[:300]


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


def build_there(recipe_json: str, recipe_path: str, index: int, shared: bool) -> Iterator[str | bytes]:
    """On a Ray node: the candidate's variants, built in the recipe's workspace (shared) or in this node's own
    folder for the recipe; yields the manifest part as JSON, then each variant's files packed."""
    import ray

    recipe = Recipe.model_validate_json(recipe_json)
    recipe.path = Path(recipe_path) if recipe_path else None
    ws = Path(recipe.workspace) if shared else cache_root() / "ray-compress" / f"{recipe.name}-{content_hash(recipe.settings_for_hash())}"
    ws.mkdir(parents=True, exist_ok=True)
    variants, failed = build_candidate(recipe, index, ws)
    node = ray.get_runtime_context().get_node_id()
    units = {v.id: shipped_unit(ws, Path(v.path)) for v in variants}
    for variant in variants:
        variant.notes.append(f"built on Ray node {node}")
    yield json.dumps({"variants": [v.model_dump(mode="json") for v in variants],
                      "failed": [f.model_dump(mode="json") for f in failed],
                      "units": {vid: [unit.name, inner] for vid, (unit, inner) in units.items()}})
    for variant in variants if not shared else []:
        unit, _ = units[variant.id]
        yield tar_bytes([(unit, unit.name)])


def shipped_unit(ws: Path, path: Path) -> tuple[Path, str]:
    """What travels for a variant at `path`: its folder under `ws/variants` and the path inside it, or the file
    itself when it lies elsewhere (a source file used as shipped)."""
    if path.is_relative_to(ws / "variants"):
        rel = path.relative_to(ws / "variants")
        return ws / "variants" / rel.parts[0], str(Path(*rel.parts[1:])) if len(rel.parts) > 1 else ""
    return path, ""


def receive(blob: bytes, folder: Path, name: str) -> Path:
    """The file or folder `name` packed in `blob`, put in `folder` whole or not at all."""
    staging = Path(tempfile.mkdtemp(prefix=f".{temp_prefix('incoming')}", suffix=".part", dir=ensure_dir(folder)))
    try:
        unpack(blob, staging)
        target = folder / name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(staging / name, target)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
