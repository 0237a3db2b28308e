"""The notes under a recommendation: what its figures rest on and what they cannot say."""

from __future__ import annotations

from toolkit.recommend.metrics import NO_ENERGY
from toolkit.recommend.select import Option
from toolkit.records import DeviceFingerprint, DeviceReport

# What each priority falls back to when no variant in budget has a cost per response (select.PRIORITY_KEY)
COST_FALLBACK = {"pcr": "utility U", "cost": "decode speed"}


def report_notes(report: DeviceReport, prompt_tokens: int, output_tokens: int) -> list[str]:
    notes = [f"Reference weights: {n}." for n in sorted({n for v in report.variants for n in v.notes if "dequantized" in n})]
    models = sorted({v.model for v in report.variants if v.model})
    if len(models) > 1:
        scored = next((q for q in report.quality if q.status == "ok" and q.bytes_scored), None)
        text = f"the same {scored.bytes_scored:,} bytes of {scored.corpus}" if scored else "the same text"
        notes.append(f"Quality across models ({', '.join(models)}): bits per byte on {text} and accuracy on the same "
                     "items; perplexity is per token of each model's own tokenizer and KL is to each model's own "
                     "reference, so neither compares across models.")
    used = {q.reference_id for q in report.quality}
    notes += [f"Fidelity base: {r.model}'s KL and top-1 agreement are measured from {r.label}, its source, which is "
              "no candidate here (every variant of it is quantized)." for r in report.references if r.id in used]
    notes += twin_notes(report)
    notes += context_notes(report, prompt_tokens + output_tokens)
    notes += [f"Threads: {warning}" for warning in [oversubscribed(report.device)] if warning]
    failed: dict[tuple[str, str, str], list[str]] = {}  # one line for a model's quants that failed for one reason
    for f in report.not_built:
        failed.setdefault((f.model, f.format, f.reason), []).append(f.quant)
    notes += [f"Not built: {model} {fmt} {', '.join(quants)}: {why}" for (model, fmt, why), quants in failed.items()]
    if report.merged_from:
        notes.append(f"One device in {len(report.merged_from)} reports (same id): repeats pooled from {', '.join(report.merged_from)}.")
    return notes


def twin_notes(report: DeviceReport) -> list[str]:
    """Candidates built from the same weights (a catalogue model and a local copy of its file): their variants
    are one model measured twice, each tied with its twin, so a pick between them means nothing."""
    models: dict[str, list[str]] = {}
    for v in report.variants + report.references:
        if v.model not in (names := models.setdefault(v.source_sha256, [])):
            names.append(v.model)
    return [f"Same weights: candidates {' and '.join(names)} come from one file (source sha256 {sha[:12]}), so each "
            "variant is measured twice and ties with its twin; keep one candidate." for sha, names in models.items()
            if len(names) > 1]


def oversubscribed(device: DeviceFingerprint) -> str | None:
    """More threads than CPUs this process may use: llama.cpp's and onnxruntime's threads spin at every barrier
    while one waits for a core (SmolLM2 Q4_0 decode on 2 CPUs: 75 tok/s at 2 threads, 40 at 4)."""
    if device.threads_used <= device.logical_cpus:
        return None
    return (f"device.threads {device.threads_used} is more than the {device.logical_cpus} CPUs this process may use, so "
            "the threads wait for each other and speed falls, to half or less; measure with at most "
            f"{device.logical_cpus} (leave device.threads out to use every CPU).")


def context_notes(report: DeviceReport, response_tokens: int) -> list[str]:
    """Models asked to work past the context they were trained for (Variant.details["context_length"], from the
    files): a response of prompt + output tokens, the longest profiled prompt, or the fidelity windows. Speed is
    still measured there; what the model says there is not what it was trained to do."""
    profiled = max((p.prompt_tokens for prof in report.profiles for p in prof.prompts), default=0)
    ctx = max((q.ctx for q in report.quality), default=0)
    out = []
    for model in dict.fromkeys(v.model for v in report.variants):
        trained = min((int(v.details["context_length"]) for v in report.variants
                       if v.model == model and "context_length" in v.details), default=None)
        past = [what.format(n) for what, n in (("responses of {:,} tokens (the budget's prompt + output)", response_tokens),
                                                ("prompts of {:,} tokens", profiled),
                                                ("fidelity windows of up to {:,} tokens", ctx)) if trained and n > trained]
        if past:
            out.append(f"Context: {model} was trained on {trained:,} tokens; {', '.join(past)} go past it (speed is "
                       "measured there, quality there is not what the model was trained for).")
    return out


def priority_notes(options: list[Option], priority: str) -> list[str]:
    """A priority that ranks by cost, where no variant in budget has one (energy unknown: no meter, no
    device.power): what ranked them instead."""
    feasible = [o for o in options if o.feasible]
    if priority not in COST_FALLBACK or not feasible or any(o.metrics.get("cost_per_1k_usd") for o in feasible):
        return []
    return [f"Priority '{priority}' ranks by cost per response, which no variant in budget has{NO_ENERGY}: ranked "
            f"by {COST_FALLBACK[priority]} instead."]
