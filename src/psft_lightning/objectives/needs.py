"""What an objective needs from the step, declared once in one frozen value.

The module, the OldPolicy callback and the LM-head kernels read this declaration and nothing else: which
frozen models to keep, which per-token statistics to compute, and from which step the old policy is
used. It is fixed for the whole run (not a function of the step) because the resources behind it, a
reference copy or an old-policy snapshot, have to exist before the first step; the one schedule in the
family, PSFT's warm-up, is the step ``old_policy_from``.
"""

from __future__ import annotations

from dataclasses import dataclass

from psft_lightning.ops import KLDirection, VocabFn


@dataclass(frozen=True)
class Needs:
    """One objective's inputs beyond the policy's log-probs of the targets.

    Attributes:
        old_policy_from: first optimizer step that uses pi_old's log-probs (``inputs.old_logprobs``),
            which also anchors the OldPolicy refresh schedule; None never uses an old policy.
        ref_kl: ``reverse`` gives ``inputs.ref_kl`` = KL(pi_theta || pi_ref), ``forward`` gives
            KL(pi_ref || pi_theta), both exact over the vocabulary; pi_ref is the frozen initial model.
        vocab_fn: a per-token function of the full next-token logits, evaluated chunk by chunk at the
            loss positions with recomputation in backward (``ops.chunked_vocab_values``); its values
            arrive as ``inputs.vocab``.
        vocab_ref: ``vocab_fn`` also receives the reference's logits (else None).
        entropy: ``inputs.entropy``, the policy's per-token entropy (detached).
    """

    old_policy_from: int | None = None
    ref_kl: KLDirection | None = None
    vocab_fn: VocabFn | None = None
    vocab_ref: bool = False
    entropy: bool = False

    def __post_init__(self) -> None:
        if self.ref_kl not in (None, "reverse", "forward"):
            raise ValueError(f"Needs.ref_kl must be 'reverse', 'forward' or None, got {self.ref_kl!r}")
        if self.vocab_ref and self.vocab_fn is None:
            raise ValueError("Needs.vocab_ref needs a vocab_fn to pass the reference logits to")
        if self.old_policy_from is not None and self.old_policy_from < 0:
            raise ValueError(f"Needs.old_policy_from must be >= 0, got {self.old_policy_from}")

    @property
    def old_policy(self) -> bool:
        """True if any step uses the old policy (so the OldPolicy callback must run)."""
        return self.old_policy_from is not None

    @property
    def reference(self) -> bool:
        """True if the frozen initial model must be kept (for a KL or for a vocabulary function)."""
        return self.ref_kl is not None or self.vocab_ref

    def old_logprobs_at(self, step: int) -> bool:
        """True if optimizer step ``step`` uses pi_old's log-probs."""
        return self.old_policy_from is not None and step >= self.old_policy_from
