"""A fit leaves the process's SIGTERM handler as it found it and keeps nothing of the run alive: the study
runs many fits in one process, and a handler that held the trainer kept every run's models."""

from __future__ import annotations

import gc
import signal
import weakref

import pytest
from tiny_run import tiny_fit_args

from psft_lightning.cli import run_cli


@pytest.fixture
def before():
    """A SIGTERM handler of the process's own, installed for the test (and the original put back)."""

    def handler(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, handler)
    yield handler
    signal.signal(signal.SIGTERM, previous)


def test_fit_restores_sigterm_and_a_later_fit_frees_the_earlier_one(tmp_path, arithmetic_files, before):
    sigint = signal.getsignal(signal.SIGINT)
    cli = run_cli(["fit", *tiny_fit_args(tmp_path / "a", arithmetic_files, 1, "--data.max_length=192")])
    trainer, policy = weakref.ref(cli.trainer), weakref.ref(cli.model.policy)
    assert signal.getsignal(signal.SIGTERM) is before  # not Lightning's handler, which holds the trainer
    assert signal.getsignal(signal.SIGINT) is sigint  # nor the Ctrl-C handler of the fit
    del cli
    run_cli(["fit", *tiny_fit_args(tmp_path / "b", arithmetic_files, 1, "--data.max_length=192")])
    gc.collect()
    assert trainer() is None and policy() is None  # runs in one process do not pile up


def test_a_fit_with_nothing_to_train_restores_the_handler_from_before_it(tmp_path, arithmetic_files, before):
    # max_epochs 0: the sanity validation installs the handler, then there is nothing to train
    extra = ("--data.max_length=192", "--trainer.max_epochs=0", "--trainer.num_sanity_val_steps=1")
    cli = run_cli(["fit", *tiny_fit_args(tmp_path, arithmetic_files, 1, *extra)])
    assert cli.trainer.global_step == 0 and cli.trainer.sanity_checking is False
    assert signal.getsignal(signal.SIGTERM) is before  # Lightning's handler was not put back
