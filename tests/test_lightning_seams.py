"""The private LightningCLI hook that ``psft`` replaces, pinned: when Lightning changes it, this fails
first and says what to look at, instead of ``--ckpt_path`` runs failing on parsing."""

from __future__ import annotations

import inspect

from lightning.pytorch.cli import LightningCLI

from psft_lightning.fit import PSFTCLI


def test_lightning_still_calls_the_ckpt_path_hook_that_psft_replaces():
    """PSFTCLI._parse_ckpt_path is a no-op: Lightning's would re-parse a checkpoint's hyper-parameters
    (records such as ``objective_name`` among them) as model arguments. No public seam skips it (the
    ``LightningCLI`` arguments have none), so the private name and its call are pinned here."""
    assert hasattr(LightningCLI, "_parse_ckpt_path"), (
        "lightning.pytorch.cli.LightningCLI has no _parse_ckpt_path any more: find where it now reads "
        "the checkpoint's hyper-parameters and replace that in psft_lightning.fit.PSFTCLI"
    )
    assert "self._parse_ckpt_path()" in inspect.getsource(LightningCLI.__init__), (
        "LightningCLI.__init__ no longer calls self._parse_ckpt_path(): PSFTCLI's no-op replaces nothing"
    )
    assert list(inspect.signature(LightningCLI._parse_ckpt_path).parameters) == ["self"]
    assert PSFTCLI._parse_ckpt_path(object.__new__(PSFTCLI)) is None  # reads nothing, not even config
