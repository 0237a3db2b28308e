"""From a device report to the figures selection weighs: one Option per profiled variant, at a response
shape, with details for the reports, and bootstrap draws of the timing figures for noise.py."""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import numpy as np

from toolkit.profiling.meters.summary import measured_watts
from toolkit.profiling.roofline import prefill_params, roofline_decode_tps, roofline_prefill_tps
from toolkit.recipe import Costs, Device
from toolkit.recommend import noise
from toolkit.recommend.metrics import BY_KEY
from toolkit.recommend.select import RULED_OUT, Option
from toolkit.records import DeviceReport, Profile, Stat

J_PER_KWH = 3.6e6


def mean_accuracy(report: DeviceReport) -> dict[str, float]:
    """Mean score over the tasks every variant was evaluated on (variants missing a task get none)."""
    tasks = sorted({r.task for r in report.accuracy})
    by_variant: dict[str, dict[str, float]] = {}
    for r in report.accuracy:
        if r.status == "ok" and r.value is not None:
            by_variant.setdefault(r.variant_id, {})[r.task] = r.value
    return {vid: sum(s.values()) / len(tasks) for vid, s in by_variant.items() if tasks and len(s) == len(tasks)}


def options_at(report: DeviceReport, prompt_tokens: int, output_tokens: int, costs: Costs):
    quality = {q.variant_id: q for q in report.quality if q.status == "ok"}
    accuracy = mean_accuracy(report)
    sizes = {v.id: v.size_bytes / 2**20 for v in report.variants}
    models = {v.id: v.model for v in report.variants}
    options, details = [], {}
    for prof in report.profiles:
        q = quality.get(prof.variant_id)
        timing = prof.prompt(prompt_tokens) if prof.status == "ok" else None
        watts = watts_of(report, prof)
        timed, response_s = _timed(_figures(timing.ttft_ms if timing else None), _figures(prof.decode_tps),
                                   watts, output_tokens, costs)
        metrics = {
            "ttft_ms": timed["ttft_ms"],
            "decode_tps": timed["decode_tps"],
            "memory_mb": prof.deploy_rss_mb if prof.deploy_rss_mb is not None else prof.peak_rss_mb,
            "perplexity": q.perplexity if q else None,
            "bits_per_byte": q.bits_per_byte if q else None,
            "accuracy": round(accuracy[prof.variant_id], 5) if prof.variant_id in accuracy else None,
            "kl": q.kl_mean if q else None,
            "energy_j": timed["energy_j"],
            "cost_per_1k_usd": timed["cost_per_1k_usd"],
        }
        details[prof.variant_id] = {
            "ttft_ms_median": round(timing.ttft_ms.median, 2) if timing else None,
            "prefill_tps_median": round(timing.prefill_tps.median, 1) if timing else None,
            "decode_tps_median": round(prof.decode_tps.median, 2) if prof.decode_tps else None,
            "itl_ms_p50": round(prof.itl_ms.median, 3) if prof.itl_ms else None,
            "itl_ms_p90": round(prof.itl_ms.p90, 3) if prof.itl_ms else None,
            "load_ms": prof.load_ms,
            "process_peak_mb": prof.peak_rss_mb,
            "response_s": round(response_s, 3) if response_s else None,
            "watts": round(watts, 2) if watts and response_s else None,
            "top1_agreement": q.top1_agreement if q else None,
            **_predicted(report, prof),
            **{f"acc_{r.task}": r.value for r in report.accuracy if r.variant_id == prof.variant_id and r.status == "ok"},
        }
        status = prof.status if prof.status != "ok" or timing else "skipped"
        options.append(Option(id=prof.variant_id, label=prof.variant_name, metrics=metrics, status=status,
                              reason=prof.reason, size_mb=sizes.get(prof.variant_id), model=models.get(prof.variant_id, "")))
    _flag_incomplete(report, options)
    return options, details


QUALITY_METRICS = ("perplexity", "bits_per_byte", "kl", "accuracy")


def _flag_incomplete(report: DeviceReport, options: list[Option]) -> None:
    """A measured variant that lacks a quality figure the others have cannot be compared with them: it is set
    aside with the reason, rather than every variant being compared on fewer objectives. Figures missing for
    one reason are named together."""
    measured = [o for o in options if o.status == "ok"]
    gaps: dict[str, dict[str, list[str]]] = {}  # variant -> why -> the figures missing for that reason
    for metric in QUALITY_METRICS:
        lacking = [o for o in measured if o.metrics.get(metric) is None]
        if not lacking or len(lacking) == len(measured):
            continue
        for o in lacking:
            gaps.setdefault(o.id, {}).setdefault(_why_missing(report, o.id, metric), []).append(BY_KEY[metric].name)
    for o in measured:
        if o.id in gaps:
            o.status = "incomplete"
            o.reason = "; ".join(why if why.startswith(RULED_OUT) else f"{_listed(names)} not measured ({why})"
                                 for why, names in gaps[o.id].items())


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _why_missing(report: DeviceReport, variant_id: str, metric: str) -> str:
    if metric == "accuracy":
        failed = [r for r in report.accuracy if r.variant_id == variant_id and r.status != "ok"]
        if failed and all(r.reason == failed[0].reason and (r.reason or "").startswith(RULED_OUT) for r in failed):
            return failed[0].reason  # one reason for every task: the staged search did not evaluate it
        return "; ".join(f"{r.task}: {r.status}" + (f" - {r.reason}" if r.reason else "") for r in failed) or "not evaluated on every task"
    q = next((q for q in report.quality if q.variant_id == variant_id), None)
    if q is None:
        return "fidelity not scored"
    return f"fidelity {q.status}" + (f": {q.reason}" if q.reason else "") if q.status != "ok" else "no reference to compare with"


Figures = dict[str, float]


def _figures(stat: Stat | None) -> Figures | None:
    return {"median": stat.median, "p10": stat.p10, "p90": stat.p90} if stat else None


def _timed(ttft: Figures | None, decode: Figures | None, watts: float | None, output_tokens: int,
           costs: Costs) -> tuple[dict[str, float | None], float | None]:
    """The budget figures that come from timings (TTFT p90, decode p10, energy, cost) and the response time."""
    response_s = ttft["median"] / 1000 + output_tokens / decode["median"] if ttft and decode and decode["median"] else None
    energy = watts * response_s if watts and response_s else None
    return {
        "ttft_ms": round(ttft["p90"], 2) if ttft else None,
        "decode_tps": round(decode["p10"], 2) if decode else None,
        "energy_j": round(energy, 3) if energy is not None else None,
        "cost_per_1k_usd": edge_cost_per_1k(energy, response_s, costs),
    }, response_s


def draws(report: DeviceReport, options: list[Option], prompt_tokens: int, output_tokens: int,
          costs: Costs, reach: set[str] | None = None) -> Iterator[list[Option]]:
    """noise.RESAMPLES option sets, each with the timing figures of every measured variant in `reach` (default:
    all) recomputed from its repeats redrawn with replacement (see noise.py); everything else as measured.
    Each variant draws from its own random stream, so who else is in the set does not change its draws."""
    n = noise.RESAMPLES
    measured = {o.id: o for o in options if o.status == "ok" and (reach is None or o.id in reach)}
    profiles = [p for p in report.profiles if p.variant_id in measured]
    ttfts = {p.variant_id: t.ttft_ms if (t := p.prompt(prompt_tokens)) else None for p in profiles}
    sigma = {"ttft": noise.process_sigma(ttfts.values()), "decode": noise.process_sigma(p.decode_tps for p in profiles),
             "rapl": noise.process_sigma(measured_watts(p) for p in profiles)}
    columns = []
    for prof in profiles:
        o = measured[prof.variant_id]
        rng = np.random.default_rng([noise.SEED, zlib.crc32(o.id.encode())])
        ttft = noise.resample(ttfts[prof.variant_id], rng, n, sigma["ttft"])
        decode = noise.resample(prof.decode_tps, rng, n, sigma["decode"])
        rapl = noise.resample(measured_watts(prof), rng, n, sigma["rapl"])
        watts = rapl["median"] if rapl else [watts_of(report, prof)] * n
        columns.append((o, ttft, decode, watts))
    accuracy = item_draws(report, set(measured), n)
    for b in range(n):
        drawn = []
        for o, ttft, decode, watts in columns:
            timed, _ = _timed(_at(ttft, b), _at(decode, b), watts[b], output_tokens, costs)
            items = {"accuracy": round(float(accuracy[o.id][b]), 5)} if o.id in accuracy else {}
            drawn.append(Option(id=o.id, label=o.label, metrics={**o.metrics, **timed, **items}, size_mb=o.size_mb, model=o.model))
        yield drawn


def item_draws(report: DeviceReport, ids: set[str], n: int) -> dict[str, np.ndarray]:
    """Mean accuracy of each variant in `ids` in `n` resamples of the tasks' items, the same items for every
    variant in a resample (paired: variants that answer an item alike move together, so only the items they
    answer differently part them). Variants with every task's items; none when a task's items do not line up."""
    tasks = sorted({r.task for r in report.accuracy})
    per: dict[str, dict[str, np.ndarray]] = {}
    for r in report.accuracy:
        if r.status == "ok" and r.items and r.variant_id in ids:
            per.setdefault(r.variant_id, {})[r.task] = np.asarray(r.items, dtype=float)
    per = {vid: scores for vid, scores in per.items() if len(scores) == len(tasks)}
    if not per:
        return {}
    sums = {vid: np.zeros(n) for vid in per}
    for task in tasks:
        sizes = {len(scores[task]) for scores in per.values()}
        if len(sizes) != 1:
            return {}
        size, rng = sizes.pop(), np.random.default_rng([noise.SEED, zlib.crc32(task.encode())])
        for start in range(0, n, 100):  # 100 resamples at a time: a full MMLU is 14,042 items
            picked = rng.integers(0, size, (min(100, n - start), size))
            for vid, scores in per.items():
                sums[vid][start:start + len(picked)] += scores[task][picked].mean(axis=1)
    return {vid: total / len(tasks) for vid, total in sums.items()}


def _at(column: dict[str, list[float]] | None, b: int) -> Figures | None:
    return {k: v[b] for k, v in column.items()} if column else None


def _predicted(report: DeviceReport, prof: Profile) -> dict[str, float]:
    """Roofline predictions for this variant on this device, to set beside the measured figures."""
    variant = next((v for v in report.variants if v.id == prof.variant_id), None)
    if report.roofline is None or variant is None:
        return {}
    out = {"predicted_decode_tps": round(roofline_decode_tps(variant.size_bytes, report.roofline.bandwidth_gbs), 1)}
    if params := prefill_params(variant):
        out["predicted_prefill_tps"] = round(roofline_prefill_tps(params, report.roofline.gflops), 1)
    return out


def noise_margin(report: DeviceReport) -> float:
    """The run-to-run swing the profile's rounds allowed for (`device.noise_margin`, kept in each profile)."""
    found = next((p.settings["noise_margin"] for p in report.profiles if "noise_margin" in p.settings), None)
    return float(found) if found is not None else Device.model_fields["noise_margin"].default


def watts_of(report: DeviceReport, prof: Profile) -> float | None:
    if watts := measured_watts(prof):
        return watts.median
    return report.power.busy_w if report.power else None


def edge_cost_per_1k(energy_j: float | None, response_s: float | None, costs: Costs) -> float | None:
    if energy_j is None or response_s is None:
        return None
    per_response = energy_j / J_PER_KWH * costs.electricity_usd_per_kwh + costs.device_usd_per_hour * response_s / 3600
    return round(per_response * 1000, 8)


