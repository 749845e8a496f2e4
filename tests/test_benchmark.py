"""scripts/benchmark.py keeps working: its smallest mode (tiny model) writes the ratios; no timing asserts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("psft_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smallest_benchmark_writes_ratios_and_verdicts(tmp_path):
    out, doc = tmp_path / "bench.json", tmp_path / "benchmarks.md"
    load_benchmark().main(["--smallest", "--in-process", "--no-trl", "--out", str(out), "--doc", str(doc)])
    report = json.loads(out.read_text())
    expected = {"head_memory", "head_speed", "psft_vs_ce", "kl_vs_ce", "packed_vs_padded", "vocab_memory"}
    assert set(report["ratios"]) == expected
    assert all(value > 0 for value in report["ratios"].values())
    assert set(report["targets"]) == expected
    assert all(isinstance(v["met"], bool) for v in report["targets"].values())
    assert len(report["results"]) == 9 and not any("error" in r["result"] for r in report["results"])
    packed = next(r for r in report["results"] if r["case"]["variant"] == "packed")["result"]
    padded = next(r for r in report["results"] if r["case"]["variant"] == "padded")["result"]
    assert packed["tokens"] == padded["tokens"] and packed["positions"] < padded["positions"]
    text = doc.read_text()
    assert "| target | value | goal | met |" in text and "packed / padded" in text


def test_data_case_measures_both_paths_on_the_same_tokens(tmp_path):
    import sys

    sys.path.insert(0, str(SCRIPT.parent))
    import bench_data

    report = bench_data.run(20_000, num_proc=1, tokenizer_name="tiny", root=str(tmp_path), isolated=False)
    assert report["same_tokens"] and report["set"]["tokens"] >= 20_000
    assert report["set"]["rows"] == report["build"]["rows"] == report["cached"]["rows"]
    assert report["build"]["cache_entries_built"] == 1 and report["cached"]["cache_entries_built"] == 0
    assert set(report["goals"]) == {"first_run_speedup", "cached_start_s", "bytes_per_token"}
    assert all(isinstance(goal["met"], bool) for goal in report["goals"].values())
