"""Benchmark: each variant's measured decode tok/s against the memory-bandwidth roofline.

Decoding one token reads every weight once, so decode tok/s <= memory bandwidth / bytes of weights. The
ratio says how close each runtime gets to what the memory allows (1.0 = at the roofline). Bandwidth is
taken from the report (measured by `toolkit profile` with the profiling threads), else measured now.

    .venv/bin/python bench/bench_roofline.py [DEVICE_REPORT.json]   # default: the demo's latest report
"""

from __future__ import annotations

import sys
from pathlib import Path

from toolkit.profiling.roofline import measure_bandwidth_gbs, roofline_decode_tps
from toolkit.records import DeviceReport


def latest_report() -> Path:
    reports = sorted(Path(".edgefirst/demo/reports").glob("device-*.json"), key=lambda p: p.stat().st_mtime)
    if not reports:
        raise SystemExit("no device report: run `toolkit run recipes/demo.yaml` first, or pass a report")
    return reports[-1]


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else latest_report()
    report = DeviceReport.load(path)
    bandwidth = report.roofline.bandwidth_gbs if report.roofline else measure_bandwidth_gbs(report.device.threads_used)
    sizes = {v.id: v.size_bytes for v in report.variants}
    print(f"{path.name}: memory bandwidth {bandwidth:.1f} GB/s ({report.device.threads_used} threads reading)")
    print(f"{'variant':<44}{'format':>7}{'MB':>8}{'decode tok/s':>14}{'roofline':>10}{'ratio':>7}")
    for prof in report.profiles:
        if prof.status != "ok" or not prof.decode_tps:
            print(f"{prof.variant_name:<44}{prof.format:>7}  {prof.status}")
            continue
        bound = roofline_decode_tps(sizes[prof.variant_id], bandwidth)
        tps = prof.decode_tps.median
        print(f"{prof.variant_name:<44}{prof.format:>7}{sizes[prof.variant_id] / 2**20:>8.1f}{tps:>14.1f}{bound:>10.1f}{tps / bound:>7.2f}")


if __name__ == "__main__":
    main()
