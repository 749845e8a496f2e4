"""The page states the machine a study ran on, with the matmul rate measured when it began."""

from __future__ import annotations

from psft_lightning.study.machine import gemm_gflops, machine
from psft_lightning.study.page import machine_line


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
