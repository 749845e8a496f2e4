"""scripts/benchmark.py keeps working: its smallest mode (tiny model) writes the ratios; no timing asserts."""

from __future__ import annotations

import json
from pathlib import Path

from scripts_module import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


def load_benchmark():
    return load_script("benchmark")


def test_smallest_benchmark_writes_ratios_and_verdicts(tmp_path):
    out, doc = tmp_path / "bench.json", tmp_path / "benchmarks.md"
    argv = ["--smallest", "--in-process", "--no-trl", "--dtype", "bf16", "--out", str(out), "--doc", str(doc)]
    load_benchmark().main(argv)
    report = json.loads(out.read_text())
    checked = {"head_memory", "head_speed", "vocab_memory"}
    unchecked = {"psft_vs_floor", "kl_vs_floor", "bf16_vs_fp32", "bf16_mfu", "packed_vs_padded"}
    assert set(report["ratios"]) == checked | unchecked
    assert all(value > 0 for value in report["ratios"].values())
    assert set(report["targets"]) == checked and set(report["unchecked"]) == unchecked
    assert all(isinstance(v["met"], bool) for v in report["targets"].values())
    assert set(report["info"]) == {"psft_vs_ce", "kl_vs_ce", "ce_mfu"}
    assert set(report["gemm_peak_flops"]) == {"fp32", "bf16"}
    results = report["results"]
    # 2 gemm, 2 head, 7 objective (5 bf16 + today's fp32 CE and PSFT), 2 packing, 2 vocab, 1 alone
    assert len(results) == 16 and not any("error" in r["result"] for r in results)
    packed = next(r for r in results if r["case"]["variant"] == "packed")["result"]
    padded = next(r for r in results if r["case"]["variant"] == "padded")["result"]
    assert packed["tokens"] == padded["tokens"] and packed["positions"] < padded["positions"]
    objective = {
        (r["case"]["variant"], r["case"]["objective"], r["case"]["dtype"]): r["result"]
        for r in results
        if r["case"]["group"] == "objective"
    }
    ce, psft = objective[("ours", "ce", "bf16")], objective[("ours", "psft", "bf16")]
    alone = objective[("forward", "psft", "bf16")]
    # the floor cases ran 3 rounds (the fp32 ones one); a ratio is the median of its per-round values
    assert len(ce["round_s"]) == len(psft["round_s"]) == len(alone["round_s"]) == 3
    assert "round_s" not in objective[("ours", "psft", "fp32")]
    rounds = zip(psft["round_s"], ce["round_s"], alone["round_s"], strict=True)
    per_round = sorted(p / (c + a) for p, c, a in rounds)
    assert report["ratios"]["psft_vs_floor"] == round(per_round[1], 4)
    spread = report["spread"]
    assert set(spread) == {"psft_vs_floor", "kl_vs_floor", "psft_vs_ce", "kl_vs_ce", "bf16_mfu"}
    assert spread["psft_vs_floor"]["min"] == round(per_round[0], 4)
    assert spread["psft_vs_floor"]["max"] == round(per_round[2], 4)
    for key, s in spread.items():
        assert len(s["rounds"]) == 3 and s["min"] <= s["median"] <= s["max"], key
        value = report["ratios"].get(key, report["info"].get(key))
        assert round(value, 4) == s["median"], key
    # MFU: FLOPs per token of a PSFT step are 4/3 of a CE step's, a forward alone's 1/3
    assert psft["flops_per_token"] == 4 / 3 * ce["flops_per_token"] == 4 * alone["flops_per_token"]
    peak = report["gemm_peak_flops"]["bf16"]
    assert psft["mfu"] == psft["flops_per_token"] * psft["tokens_per_s"] / peak
    assert [op["share"] for op in psft["profile"]] == sorted(
        (op["share"] for op in psft["profile"]), reverse=True
    )
    text = doc.read_text()
    assert "| target | value | range (rounds) | goal | met |" in text and "not checked: tiny model" in text
    low, high = spread["psft_vs_floor"]["min"], spread["psft_vs_floor"]["max"]
    assert (
        f"`psft_vs_floor` | {report['unchecked']['psft_vs_floor']['value']} | {low:.3f}-{high:.3f} (3) |"
        in text
    )
    assert "## GEMM peak" in text and "## Profile: one psft step, bf16" in text


def test_cuda_without_a_gpu_is_a_one_line_error(monkeypatch, capsys):
    import pytest
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="--device cuda, but torch sees no CUDA device"):
        load_benchmark().main(["--device", "cuda", "--dtype", "bf16", "--quick"])


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


def test_trl_comparison_alternates_processes_and_reports_the_median_of_per_round_ratios():
    bench = load_benchmark()
    args = bench.parse(["--dtype", "bf16", "--only", "alone,trl", "--rounds", "3"])
    order = [(c["group"], c["checkpointing"], c["round"]) for c in bench.plan(args)]
    assert order == [
        (group, checkpointing, round_)
        for checkpointing in (False, True)
        for round_ in range(3)
        for group in ("alone", "trl")
    ]

    def run(group: str, round_: int, step_s: float, peak: float, error: str | None = None) -> dict:
        case = {"group": group, "size": "s", "checkpointing": True, "round": round_, "variant": "v"}
        result = {"error": error} if error else {"step_s": step_s, "step_times_s": [step_s], "tokens": 600}
        return {"case": case, "result": result if error else {**result, "peak_mem_mb": peak}}

    # rounds: ours 4, 6, 5 s; TRL 5, 6, 8 s -> per-round speed ratios 5/4, 6/6, 8/5 -> median 1.25
    ours = [run("alone", i, s, p) for i, (s, p) in enumerate([(4.0, 100), (6.0, 120), (5.0, 110)])]
    trl = [run("trl", i, s, 200) for i, s in enumerate([5.0, 6.0, 8.0])]
    merged = bench.merge_rounds([x for pair in zip(ours, trl, strict=True) for x in pair])
    assert [m["case"]["group"] for m in merged] == ["alone", "trl"] and "round" not in merged[0]["case"]
    mine = merged[0]["result"]
    assert mine["round_s"] == [4.0, 6.0, 5.0] and mine["step_times_s"] == [4.0, 6.0, 5.0]
    assert mine["step_s"] == 5.0 and mine["tokens_per_s"] == 120.0 and mine["peak_mem_mb"] == 120
    ratios = bench.per_round(merged, args)
    assert ratios == {"ours_vs_trl_speed[checkpointing on]": [1.25, 1.0, 1.6]}
    values, _ = bench.ratios(merged, args)
    assert values["ours_vs_trl_speed[checkpointing on]"] == 1.25
    assert values["ours_vs_trl_memory[checkpointing on]"] == 120 / 200
    # a round that failed fails the case: no ratio from the rounds that happened to run
    failed = bench.merge_rounds([*ours, run("trl", 0, 0, 0, error="killed"), *trl[1:]])
    assert failed[1]["result"]["error"] == "killed" and bench.per_round(failed, args) == {}
