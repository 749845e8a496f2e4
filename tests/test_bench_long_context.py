"""The long-context benchmark's activation count: the live tensor bytes a step allocates, and their peak."""

from __future__ import annotations

import gc

import torch
from scripts_module import load_script


def _bench():
    return load_script("bench_long_context")


def test_live_tensors_counts_each_new_storage_once_until_it_is_freed():
    before = torch.ones(1000)  # allocated before: never counted, nor what is made in place of it
    with _bench().LiveTensors() as live:
        a = torch.empty(1000, dtype=torch.float32)  # 4,000 bytes
        view = a[10:20].t()  # a view: the same storage
        before.mul_(2)
        b = torch.zeros(250, dtype=torch.float64)  # 2,000 bytes
        assert (live.live, live.peak) == (6000, 6000)
        del a, view
        gc.collect()
        assert live.live == 2000
        c = torch.ones(100, dtype=torch.int16)  # 200 bytes: below the peak
        assert (live.live, live.peak) == (2200, 6000)
    assert live.at_peak == {"empty": 4000, "zeros": 2000}
    del b, c


def test_live_tensors_sees_the_backward_pass():
    weight = torch.full((64, 64), 0.01, requires_grad=True)
    weight.grad = torch.zeros(64, 64)
    x = torch.ones(8, 64)
    with _bench().LiveTensors() as live:
        y = (x @ weight).tanh()  # tanh saves its [8, 64] output: 2,048 bytes
        y.sum().backward()
        del y
        gc.collect()
    assert live.peak >= 8 * 64 * 4
    assert live.live == 0
    # accumulated in place into the gradient allocated before: each entry sums 8 rows of 1 - tanh(0.64)^2
    assert torch.allclose(weight.grad, torch.full((64, 64), 8 * (1 - torch.tensor(0.64).tanh() ** 2)))
