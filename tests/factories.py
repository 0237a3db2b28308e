"""Factories for synthetic device reports and cloud options, shared by the tests (import from here, not from
another test module)."""

from __future__ import annotations

from toolkit.recommend.cloud import CloudModel
from toolkit.records import DeviceFingerprint, DevicePower, DeviceReport, Profile, PromptTiming, Quality, Stat, Variant

FP = DeviceFingerprint(id="dev1", hostname="h", cpu_model="cpu", physical_cores=2, logical_cpus=2, threads_used=2,
                       ram_mb=1000, os="Linux", python="3.11", runtimes={"llama_cpp_python": "0.3.36"})


FP_BARE = DeviceFingerprint(id="dev1", hostname="h", cpu_model="cpu", physical_cores=2, logical_cpus=2, threads_used=2,
                       ram_mb=1000, os="Linux", python="3.11", runtimes={})


POWER = DevicePower(idle_w=5, busy_w=20)


def spread(x: float, low: float, high: float) -> list[float]:
    """Three repeats around a median `x` that spread, so that p10 and p90 differ from the median (budgets use them)."""
    return [x * low, x, x * high]


def ladder_report(rows, power: DevicePower | None = POWER) -> DeviceReport:
    """One variant per row (TTFT median at 64 and 512 tokens, decode median, memory, perplexity); the repeats
    spread: TTFT p90 is 1.08 x the median, decode p10 0.92 x (numpy's linear percentiles of the three)."""
    variants, profiles, quality = [], [], []
    for i, (ttft64, ttft512, tps, mem, ppl) in enumerate(rows):
        vid = f"v{i}"
        variants.append(Variant(id=vid, label=f"m Q{i}", model="m", format="gguf", runtime="llama.cpp", quant=f"Q{i}",
                                path="/x", size_bytes=1 << 20, sha256="0", source="s", source_sha256="0", seconds=0, tools={}))
        profiles.append(Profile(
            key=vid, variant_id=vid, variant_name=f"m Q{i}", format="gguf", runtime="llama.cpp", device=FP, status="ok",
            settings={}, file_size_mb=1, load_ms=10,
            prompts=[PromptTiming(prompt_tokens=n, ttft_ms=Stat.of(spread(t, 0.95, 1.1)),
                                  prefill_tps=Stat.of([n / x * 1000 for x in spread(t, 0.95, 1.1)]))
                     for n, t in ((64, ttft64), (512, ttft512))],
            decode_tokens=128, decode_tps=Stat.of(spread(tps, 0.9, 1.05)),
            itl_ms=Stat.of([1000 / x for x in spread(tps, 0.9, 1.05)]), peak_rss_mb=mem,
        ))
        quality.append(Quality(key=vid, variant_id=vid, status="ok", corpus="c", corpus_sha256="0", ctx=512, chunks=1, perplexity=ppl))
    return DeviceReport(recipe="r", created="now", toolkit_version="0", device=FP, power=power, variants=variants,
                        profiles=profiles, quality=quality)


CLOUDS = [
    CloudModel(id="cheap", provider="A", model="small", usd_per_1m_input=0.1, usd_per_1m_output=0.4, ttft_ms=300, tokens_per_s=100),
    CloudModel(id="dear", provider="B", model="big", usd_per_1m_input=1, usd_per_1m_output=4, ttft_ms=300, tokens_per_s=100),
]


def repeats_report(*variants: dict) -> DeviceReport:
    """Each variant: ttft and decode repeats, and fixed memory, perplexity, bits per byte, KL, file size and model."""
    vs, profiles, quality = [], [], []
    for i, v in enumerate(variants):
        vid = f"v{i}"
        model = v.get("model", "m")
        vs.append(Variant(id=vid, label=f"{model} Q{i}", model=model, format="gguf", runtime="llama.cpp", quant=f"Q{i}", path="/x",
                          size_bytes=int(v.get("mb", 100) * 2**20), sha256="0", source="s", source_sha256="0", seconds=0,
                          tools={}))
        profiles.append(Profile(
            key=vid, variant_id=vid, variant_name=f"m Q{i}", format="gguf", runtime="llama.cpp", device=FP_BARE, status="ok",
            settings={}, file_size_mb=1,
            prompts=[PromptTiming(prompt_tokens=512, ttft_ms=Stat.of(v["ttft"]), prefill_tps=Stat.of([512 / t * 1000 for t in v["ttft"]]))],
            decode_tokens=128, decode_tps=Stat.of(v["decode"]), itl_ms=Stat.of([1000 / d for d in v["decode"]]),
            peak_rss_mb=v.get("mem", 300),
        ))
        quality.append(Quality(key=vid, variant_id=vid, status="ok", corpus="c", corpus_sha256="0", ctx=512, chunks=1,
                               perplexity=v.get("ppl", 30), bits_per_byte=v.get("bpb"), kl_mean=v.get("kl", 0.01),
                               bytes_scored=4096 if "bpb" in v else 0))
    return DeviceReport(recipe="r", created="now", toolkit_version="0", device=FP_BARE, power=DevicePower(idle_w=5, busy_w=20),
                        variants=vs, profiles=profiles, quality=quality)
