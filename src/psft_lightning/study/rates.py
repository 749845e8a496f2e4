"""What a study costs on this project's 2-core CPU machine: the measured rates and the cost of the OOD
sets, from which ``Budget.estimate()`` adds up a budget (a reader scales them by the matmul rate the
page states)."""

from __future__ import annotations

from psft_lightning.evaluation import EvalConfig

# Rates on this project's 2-core CPU machine, idle (SmolLM2-135M, fp32): the `smoke` study page before
# this study (docs/results.md of 2026-12-01, load average 1.7-2.0) trained 32 steps of 8 x 128 packed
# tokens in about 145 s (SFT) to 186 s (PSFT) beyond the base model's evaluation, and evaluated the
# base model (about 60 answers of 48 new tokens in batches of 16, 48 MC questions, 16 drift and 12
# probe rows, the model load) in 51 s. Timed again for this change on the shared machine (load average
# about 10), a model load took 42-86 s and 4 answers of 8 tokens 37 s: contention, not the cost on
# idle cores, so the idle rates are used. bf16-mixed speeds training up, if at all; it does not
# change generation (the evaluation runs the fp32 weights).
# Timed again idle for the standard study (2026-12-02): bf16-mixed training ran at a median 352 training
# tokens/s (SFT, batch 8 x 128) on the old task's rows of ~110 tokens.
# Re-timed idle on the one-step task (2026-12-03, AMD EPYC without AMX, bf16 GEMM ~410 GFLOP/s; one SFT
# run of 256 rows, docs/calibration.md): a step of 8 rows of ~70 tokens took a median 2.85 s (196
# tokens/s: the optimizer's fixed cost per step weighs more on short rows), PSFT and the KL objectives
# more by their step ratios to CE (1.24 and 1.36, docs/benchmarks.md: the frozen twin's forward); 128
# dev answers took 25.9 s and 516 test answers 106.5 s in batches of 64 (a trained one-step answer is
# ~19 tokens and stops at EOS): 0.2 s each; the run's start-up (model load, trainer, first probe)
# 28.6 s. The base model's answers run to the 48-token cap: 576 took 158 s and 207 s in two starts of
# the standard study (0.27-0.36 s each).
# fp32 from bf16 by this host's measured bf16/fp32 step ratio, 1.89 (docs/benchmarks.md)
SECONDS_PER_TRAIN_TOKEN = {"32-true": 1.89 / 196, "bf16-mixed": 1 / 196}
TRAIN_COST = {"psft": 1.24, "psft_warmup": 1.24, "kl": 1.36}  # per-token cost beyond SFT's, by objective
SECONDS_PER_ANSWER = {16: 0.5, 64: 0.21}  # a greedy or sampled answer of up to 48 new tokens, by batch
BASE_ANSWER_COST = 1.5  # the base model's answer over a trained one's (0.27-0.36 s / 0.21 s, batch 64)
SECONDS_PER_RUN = 29  # start-up and model load, the entropy probe and the OOD sets at SMALL_OOD's sizes
SECONDS_PER_PROBE_ROW = 0.175  # a periodic entropy probe: 16 rows took 2.5-4.0 s (fp32, the standard study)
# The OOD sets beyond SMALL_OOD's sizes, per item, from timing the base model on every item of
# data/ood/ (data/ood/README.md: one thread, niced, shared machine): 64 IF answers of 48 tokens took
# 35.6 s (0.56 s each, near SECONDS_PER_ANSWER), 208 multiple-choice questions 107.3 s, 64 drift rows
# 42.2 s; each rate is its measured time per item times SECONDS_PER_ANSWER / 0.56.
SECONDS_PER_MC_ITEM = 0.46  # four continuations scored by log-likelihood
SECONDS_PER_DRIFT_ROW = 0.59  # one teacher-forced answer of up to 128 tokens


def answer_seconds(batch_size: int) -> float:
    """SECONDS_PER_ANSWER of the largest measured batch size not above ``batch_size``."""
    return SECONDS_PER_ANSWER[max([b for b in SECONDS_PER_ANSWER if b <= batch_size], default=16)]


OOD_ROWS = {"num_mc": 208, "num_drift": 64, "num_if": 64}  # the bundled sets: what a size of 0 means
TOKENS_PER_ROW = 70  # prompt with chat template (51) and answer with EOS (19) of a one-step row
# GRPO (TRL) per token of the steps' sample budget (prompts x samples x max new tokens), generation and
# the policy's scoring forward and backward counted: on the one-step task (answers of ~18 tokens, 32
# allowed), 4 prompts x 4 samples took 12-16 s a step in fp32 and 8-10 s in bf16-mixed on an idle host
SECONDS_PER_RL_TOKEN = {"fp32": 0.027, "bf16": 0.018}


def ood_cost(sizes: dict) -> float:
    """Seconds of the OOD sets at ``sizes`` (EvalConfig overrides) by the per-item rates above."""
    config = EvalConfig(**sizes)
    return sum(set_cost(config, name) for name in ("mc", "drift", "if"))


def set_cost(config: EvalConfig, name: str) -> float:
    """Seconds of one OOD set (``mc``, ``drift`` or ``if``); an IF answer costs in proportion to its
    length."""
    rows = getattr(config, f"num_{name}") or OOD_ROWS[f"num_{name}"]
    if name == "if":
        return rows * answer_seconds(config.batch_size) * config.if_max_new_tokens / 48
    return rows * {"mc": SECONDS_PER_MC_ITEM, "drift": SECONDS_PER_DRIFT_ROW}[name]
