"""The benchmarks' own code runs (a few records, one pass): figures are the benchmarks' business.

Nothing here is timed; `make bench` measures (bench/scale.py).
"""

from __future__ import annotations

from pathlib import Path

from bench import scale


def test_scale_benchmark_measures_a_pass_and_the_listing(tmp_path: Path) -> None:
    results = scale.run([20], tmp_path)
    figures = results["sizes"]["20"]
    assert figures["records"] == 20
    assert figures["reconcile_pass"]["n"] >= 1 and figures["reconcile_redis_commands"] > 0
    assert figures["list_whole"]["n"] == 5 and figures["list_page_100"]["n"] == 20
