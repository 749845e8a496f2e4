"""The models a step runs: the policy, its frozen twins, and pi_old behind one interface."""

from psft_lightning.policies.old_policy import (
    LookaheadOldPolicy,
    Mode,
    OldPolicyModel,
    SnapshotOldPolicy,
    build_old_policy,
)
from psft_lightning.policies.twins import PolicySettings, Twins, build_twins, check_strategy, frozen

__all__ = [
    "LookaheadOldPolicy",
    "Mode",
    "OldPolicyModel",
    "PolicySettings",
    "SnapshotOldPolicy",
    "Twins",
    "build_old_policy",
    "build_twins",
    "check_strategy",
    "frozen",
]
