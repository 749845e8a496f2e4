"""The page's header: the machine a study ran on (its matmul rate measured when it began), its wall time."""

from __future__ import annotations

from psft_lightning.study.budgets import BUDGETS
from psft_lightning.study.machine import gemm_gflops, machine, machine_line
from psft_lightning.study.timing import wall_time


def test_the_gemm_rate_is_measured_per_dtype_and_the_page_states_it():
    rates = gemm_gflops(n=64, repeats=2)
    assert set(rates) == {"bf16", "fp32"} and all(rate > 0 for rate in rates.values())
    host = machine()
    assert host["cores"] >= 1 and host["cpu"] and set(host["gemm_gflops"]) == {"bf16", "fp32"}
    record = {
        "machine": {
            **host,
            "cpu": "EPYC",
            "cores": 2,
            "gpu": False,
            "gemm_gflops": {"bf16": 401.4, "fp32": 165.6},
        }
    }
    assert machine_line(record) == (
        f"EPYC, 2 CPU cores, torch {host['torch']}, no GPU; "
        "matmul peak 401 GFLOP/s bf16, 166 fp32 (at the start)"
    )
    assert "matmul" not in machine_line({})  # a record from before the machine was recorded


def test_the_wall_time_keeps_the_rl_follow_up_apart_from_the_study():
    run = {"grpo_seconds": 50.0, "after": {"wall_seconds": 10.0}}
    record = {
        "seconds": 900.0,
        "budget": "standard",
        "rl": {"ce": run, "psft": run},
        "rl_seeds": {"ce": [run]},
    }
    text = wall_time(record, BUDGETS["standard"])
    assert text.startswith("Wall time of the study 12.0 min (estimate for `standard`: ")  # 900 - 3 x 60 s
    assert text.endswith(
        "under 90 minutes on 2 idle CPU cores (estimate below)), then the RL follow-up 3.0 min"
    )
    assert wall_time({"seconds": 60.0, "budget": "standard"}, BUDGETS["standard"]).endswith(
        "(estimate below))"
    )
