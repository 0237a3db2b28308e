"""Fleets: several device reports at once, roofline predictions, and the cluster simulation's inputs."""

from __future__ import annotations

import statistics
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from toolkit.errors import UserError
from toolkit.profiling.roofline import Roofline, prefill_params, roofline_decode_tps, roofline_prefill_tps
from toolkit.profiling.rounds import merge_rounds
from toolkit.recommend.engine import Recommendation
from toolkit.records import DeviceReport, Variant


def load_reports(paths: list[Path]) -> list[DeviceReport]:
    """Device reports from files and folders (every device-*.json inside); one device once."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("device-*.json"))
            if not found:
                raise UserError("no device-*.json reports in this folder", file=path)
            files += found
        elif path.exists():
            files.append(path)
        else:
            raise UserError("device report not found", file=path)
    by_device: dict[str, list[tuple[Path, DeviceReport]]] = {}
    for file in files:
        report = DeviceReport.load(file)
        by_device.setdefault(report.device.id, []).append((file, report))
    return [same_device(group) for group in by_device.values()]


def same_device(group: list[tuple[Path, DeviceReport]]) -> DeviceReport:
    """Reports with one device id are one device (same hardware, software, machine-id and label): its repeats
    are pooled, profile by profile where they were measured alike (same key), and `merged_from` says so."""
    (_, first), rest = group[0], group[1:]
    if not rest:
        return first
    profiles = []
    for profile in first.profiles:
        alike = [profile] + [p for _, r in rest for p in r.profiles if p.key == profile.key and p.status == "ok"]
        merged = merge_rounds(alike) if profile.status == "ok" else profile
        profiles.append(merged.model_copy(update={"rounds": sum(p.rounds for p in alike if p.status == "ok") or 1}))
    known = {v.id for v in first.variants}
    variants = {v.id: v for _, r in rest for v in r.variants if v.id not in known}  # measured only in a later report
    profiles += list({p.variant_id: p for _, r in rest for p in r.profiles if p.variant_id in variants}.values())
    return first.model_copy(update={"profiles": profiles, "variants": first.variants + list(variants.values()),
                                    "merged_from": [str(f) for f, _ in group]})


class FleetRow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    device: str
    cpu: str
    answer: str
    pick: str | None
    decode_tps: float | None
    ttft_ms: float | None
    usd_per_1k: float | None
    why: str


def fleet_summary(recs: list[Recommendation]) -> list[FleetRow]:
    rows = []
    for rec in recs:
        row = next((r for r in rec.rows if r.variant_id == rec.pick), None)
        rows.append(FleetRow(
            device=rec.device.split(":")[0], cpu=rec.device.split(": ", 1)[-1], answer=rec.answer,
            pick=rec.pick_label or rec.cloud_pick, decode_tps=row.detail["decode_tps_median"] if row else None,
            ttft_ms=row.metrics["ttft_ms"] if row else None, usd_per_1k=row.metrics.get("cost_per_1k_usd") if row else None,
            why=rec.message,
        ))
    return rows


class Prediction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    variant_id: str
    variant: str
    size_mb: float
    decode_tps: float
    prefill_tps: float | None
    fits: bool
    measured_decode_tps: float | None = None
    measured_prefill_tps: float | None = None


def predict(variants: list[Variant], roofline: Roofline, ram_mb: float | None = None) -> list[Prediction]:
    """Roofline estimates for variants on a device known only by its bandwidth, compute and RAM."""
    out = []
    for v in variants:
        size_mb = v.size_bytes / 2**20
        out.append(Prediction(
            variant_id=v.id, variant=v.label, size_mb=round(size_mb, 1),
            decode_tps=round(roofline_decode_tps(v.size_bytes, roofline.bandwidth_gbs), 1),
            prefill_tps=round(roofline_prefill_tps(params, roofline.gflops), 1) if (params := prefill_params(v)) else None,
            fits=ram_mb is None or size_mb * 1.2 + 300 < ram_mb,  # weights + KV/buffers + runtime
        ))
    return sorted(out, key=lambda p: -p.decode_tps)


def predicted_vs_measured(report: DeviceReport, prompt_tokens: int) -> tuple[list[Prediction], dict[str, float]]:
    """Predictions next to measurements on a profiled device, and how close they came (median ratio)."""
    if report.roofline is None:
        raise UserError("this device report has no roofline (made by an older toolkit?)", field="roofline")
    preds = {p.variant_id: p for p in predict(report.variants, report.roofline)}
    rows, decode_ratio, prefill_ratio = [], [], []
    for prof in report.profiles:
        p = preds.get(prof.variant_id)
        if p is None or prof.status != "ok" or not prof.decode_tps:
            continue
        timing = prof.prompt(prompt_tokens)
        p.measured_decode_tps = round(prof.decode_tps.median, 1)
        p.measured_prefill_tps = round(timing.prefill_tps.median, 1) if timing else None
        decode_ratio.append(p.measured_decode_tps / p.decode_tps)
        if p.prefill_tps and p.measured_prefill_tps:
            prefill_ratio.append(p.measured_prefill_tps / p.prefill_tps)
        rows.append(p)
    summary = {
        "decode_measured_over_predicted_median": round(statistics.median(decode_ratio), 3) if decode_ratio else None,
        "prefill_measured_over_predicted_median": round(statistics.median(prefill_ratio), 3) if prefill_ratio else None,
    }
    return rows, summary
