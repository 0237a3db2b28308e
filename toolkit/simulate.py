"""Discrete-event simulation of an edge cluster with cloud overflow (SimPy), as in the Edge-First paper.

Devices serve requests one at a time (or `slots` at a time) with service times from their profiles;
each has a sliding-window rate limiter; a selection policy (random, weighted by capability, or
load-aware) picks among the devices the limiter admits; a request no device admits goes to the cloud.
Everything is seeded, so a run is reproducible.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import simpy
from pydantic import BaseModel, ConfigDict, Field

POLICIES = ("random", "weighted", "load_aware")


class SimDevice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    ttft_s: float = Field(gt=0, description="prefill time for the prompt")
    decode_tps: float = Field(gt=0)
    slots: int = Field(1, ge=1, description="requests served at once")
    rpm: int = Field(60, ge=1, description="admissions allowed per sliding window")
    window_s: float = Field(60, gt=0)
    usd_per_response: float = Field(0.0, ge=0)

    def service_s(self, output_tokens: int) -> float:
        return self.ttft_s + output_tokens / self.decode_tps


class SimCloud(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "cloud"
    ttft_s: float = Field(0.5, gt=0)
    decode_tps: float = Field(80, gt=0)
    usd_per_response: float = Field(0.0002, ge=0)


class Workload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    arrival: Literal["poisson", "onoff", "pareto"] = "poisson"
    rate_per_s: float = Field(1.0, gt=0, description="mean arrivals per second")
    burst_factor: float = Field(4.0, ge=1, description="onoff: rate while on = burst_factor x mean rate")
    on_s: float = Field(20, gt=0)
    pareto_shape: float = Field(1.5, gt=1, description="pareto: gaps drawn with this tail index")
    output_tokens: int = Field(128, ge=1)
    output_sigma: float = Field(0.0, ge=0, description="lognormal spread of output length (0 = fixed)")
    duration_s: float = Field(600, gt=0)
    seed: int = 1


class PolicyResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policy: str
    requests: int
    cloud_share: float
    p50_s: float
    p95_s: float
    p99_s: float
    usd_per_1k: float
    utilisation: dict[str, float]


@dataclass
class _Device:
    spec: SimDevice
    resource: simpy.Resource
    admitted: deque = field(default_factory=deque)
    outstanding: int = 0
    busy_s: float = 0.0

    def admits(self, now: float) -> bool:
        while self.admitted and now - self.admitted[0] >= self.spec.window_s:
            self.admitted.popleft()
        return len(self.admitted) < self.spec.rpm


def _gaps(workload: Workload, rng: random.Random):
    """Inter-arrival times for the chosen arrival process, all with the same mean rate."""
    rate = workload.rate_per_s
    if workload.arrival == "poisson":
        while True:
            yield rng.expovariate(rate)
    elif workload.arrival == "onoff":
        on_rate = rate * workload.burst_factor
        off_s = workload.on_s * (workload.burst_factor - 1)
        while True:
            t = 0.0
            while (gap := rng.expovariate(on_rate)) + t < workload.on_s:
                t += gap
                yield gap
            yield (workload.on_s - t) + off_s + rng.expovariate(on_rate)
    else:  # Pareto gaps: heavy-tailed, bursty, mean 1/rate
        a = workload.pareto_shape
        scale = (a - 1) / (a * rate)
        while True:
            yield scale * rng.paretovariate(a)


def _output_tokens(workload: Workload, rng: random.Random) -> int:
    if workload.output_sigma == 0:
        return workload.output_tokens
    mu = math.log(workload.output_tokens) - workload.output_sigma**2 / 2
    return max(1, round(rng.lognormvariate(mu, workload.output_sigma)))


def _choose(policy: str, devices: list[_Device], rng: random.Random, output_tokens: int) -> _Device:
    if policy == "random":
        return rng.choice(devices)
    if policy == "weighted":
        return rng.choices(devices, weights=[d.spec.decode_tps * d.spec.slots for d in devices])[0]
    # load-aware: the device that would finish this request soonest given what it already holds
    return min(devices, key=lambda d: ((d.outstanding + 1) / d.spec.slots) * d.spec.service_s(output_tokens))


def simulate(devices: list[SimDevice], cloud: SimCloud, workload: Workload, policy: str, max_queue: int = 4) -> PolicyResult:
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r} (known: {', '.join(POLICIES)})")
    env = simpy.Environment()
    rng = random.Random(workload.seed)  # same arrivals for every policy: policies differ, load does not
    choice_rng = random.Random(workload.seed + 1)
    nodes = [_Device(d, simpy.Resource(env, capacity=d.slots)) for d in devices]
    latencies: list[float] = []
    cost = {"usd": 0.0, "cloud": 0}

    def serve(node: _Device, tokens: int, arrived: float):
        with node.resource.request() as slot:
            yield slot
            service = node.spec.service_s(tokens)
            yield env.timeout(service)
            node.busy_s += service
        node.outstanding -= 1
        latencies.append(env.now - arrived)
        cost["usd"] += node.spec.usd_per_response

    def to_cloud(tokens: int, arrived: float):
        yield env.timeout(cloud.ttft_s + tokens / cloud.decode_tps)
        latencies.append(env.now - arrived)
        cost["usd"] += cloud.usd_per_response
        cost["cloud"] += 1

    def arrivals():
        gaps = _gaps(workload, rng)
        while True:
            yield env.timeout(next(gaps))
            if env.now > workload.duration_s:
                return
            tokens = _output_tokens(workload, rng)
            open_nodes = [n for n in nodes if n.admits(env.now) and n.outstanding < n.spec.slots + max_queue]
            if not open_nodes:
                env.process(to_cloud(tokens, env.now))
                continue
            node = _choose(policy, open_nodes, choice_rng, tokens)
            node.admitted.append(env.now)
            node.outstanding += 1
            env.process(serve(node, tokens, env.now))

    env.process(arrivals())
    env.run()
    ordered = sorted(latencies)
    n = len(ordered)

    def pct(q: float) -> float:
        return ordered[min(n - 1, int(q * n))] if n else 0.0

    return PolicyResult(
        policy=policy,
        requests=n,
        cloud_share=cost["cloud"] / n if n else 0.0,
        p50_s=round(pct(0.50), 3),
        p95_s=round(pct(0.95), 3),
        p99_s=round(pct(0.99), 3),
        usd_per_1k=round(cost["usd"] / n * 1000, 6) if n else 0.0,
        utilisation={node.spec.name: round(node.busy_s / max(env.now, 1e-9) / node.spec.slots, 3) for node in nodes},
    )


def compare(devices: list[SimDevice], cloud: SimCloud, workload: Workload, max_queue: int = 4) -> list[PolicyResult]:
    return [simulate(devices, cloud, workload, p, max_queue) for p in POLICIES]
