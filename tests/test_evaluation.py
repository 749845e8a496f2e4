"""Evaluation pieces checked by hand: answer extraction, constraints, MC scoring, probes, generation,
and the GenerationEval callback's promise to leave training untouched."""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import pytest
import torch

from psft_lightning.callbacks import GenerationEval, OldPolicy
from psft_lightning.callbacks.generation_eval import subject
from psft_lightning.cli import run_cli
from psft_lightning.data import Fields, PSFTDataModule
from psft_lightning.errors import ConfigError, DataError
from psft_lightning.evaluation import (
    EvalConfig,
    EvalSuite,
    MCItem,
    accuracy,
    extract_answer,
    follows,
    generate,
    if_strict,
    mc_scores,
    render_prompts,
    teacher_forced,
)
from psft_lightning.evaluation.constraints import CHECKS, validate_checks
from psft_lightning.evaluation.ood import IFItem, drift_examples, drift_nll, mc_context, mc_example
from psft_lightning.models import load_tokenizer
from psft_lightning.module import PSFTModule

VAL = "data/arithmetic/val.jsonl"
SMALL = dict(
    num_eval=2,
    k=2,
    max_new_tokens=4,
    num_probe=2,
    num_mc=2,
    num_drift=2,
    num_if=2,
    drift_max_new_tokens=4,
    if_max_new_tokens=4,
)


@pytest.fixture(scope="module")
def tiny():
    module = PSFTModule(model="tiny", objective="ce")
    module.configure_model()
    return module, load_tokenizer("tiny")


# ------------------------------------------------------------------------------------ answers
def test_extract_answer_takes_the_last_sentence_and_exact_match():
    assert extract_answer("12 + 7 = 19.\n19 - 5 = 14.\nThe answer is 14.") == 14
    assert extract_answer("The answer is 3. No wait. The answer is -4.") == -4
    assert extract_answer("It is 14.") is None
    assert extract_answer("The answer is 14") is None  # the sentence needs its full stop
    assert accuracy(["The answer is 14.", "The answer is 15.", "14"], [14, 14, 14]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        accuracy(["The answer is 1."], [1, 2])


# -------------------------------------------------------------------------------- constraints
@pytest.mark.parametrize(
    "kind, value, good, bad",
    [
        ("bullet_count", 3, "Fruits:\n* apple\n* pear\n- plum", "* apple\n* pear"),
        ("lowercase", None, "all quiet here.", "Not quiet."),
        ("uppercase", None, "HELLO WORLD!", "Hello"),
        ("includes", "green", "The Green hills.", "greenery only"),
        ("excludes", "bark", "Dogs wag.", "Dogs bark."),
        ("max_words", 3, "one two three", "one two three four"),
        ("ends_with", "That is all.", "Trees grow. That is all.\n", "That is all. Really."),
        ("starts_with", "Yes", "Yes, a city.", "A city. Yes"),
        ("no_comma", None, "no commas here", "one, two"),
        ("json", None, '```json\n{"name": "Ann", "age": 3}\n```', "name: Ann"),
    ],
)
def test_each_constraint_accepts_and_rejects(kind, value, good, bad):
    assert CHECKS[kind](good, value) is True
    assert CHECKS[kind](bad, value) is False


def test_if_strict_needs_every_constraint_of_a_prompt():
    checks = [{"kind": "lowercase", "value": None}, {"kind": "max_words", "value": 3}]
    items = [IFItem("p", checks), IFItem("q", checks)]
    assert follows("two words", checks) and not follows("Two words", checks)
    assert if_strict(["two words", "far too many words here"], items) == 0.5
    with pytest.raises(DataError, match="unknown check"):
        validate_checks([{"kind": "rhymes"}], "if.jsonl:3")


# ------------------------------------------------------------------------------ hand-computed
def hand_logprobs(model, ids: list[int], start: int) -> list[float]:
    """log p(ids[t] | ids[:t]) for t >= start, from one plain full forward pass."""
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0].double().log_softmax(-1)
    return [logp[t - 1, ids[t]].item() for t in range(start, len(ids))]


def test_mc_scores_match_a_hand_computation_of_lm_eval_acc_and_acc_norm(tiny):
    module, tok = tiny
    items = [
        MCItem("What is 2 + 2?", ["4", "22", "five hundred"], 0),
        MCItem("Capital of France?", ["Paris", "a very long wrong option", "Rome"], 2),
        MCItem("Colour of the sky?", ["blue", "green"], 1),
    ]
    acc = acc_norm = 0
    for item in items:
        context = mc_context(item.question)
        n_ctx = len(tok(context)["input_ids"])
        loglik = []
        for choice in item.choices:
            ids = tok(context + " " + choice)["input_ids"]
            assert mc_example(tok, context, " " + choice).input_ids == ids
            loglik.append(sum(hand_logprobs(module.policy, ids, n_ctx)))
        normed = [s / len(c) for s, c in zip(loglik, item.choices, strict=True)]
        acc += int(np.argmax(loglik)) == item.answer
        acc_norm += int(np.argmax(normed)) == item.answer
    scores = mc_scores(module.token_stats, module.policy, tok, items, batch_size=4)
    assert scores == {"acc": acc / 3, "acc_norm": acc_norm / 3}


def test_entropy_probe_and_drift_nll_match_a_full_softmax_by_hand(tiny):
    module, tok = tiny
    refs = [{"prompt": "Say hi.", "reference": "hi there"}, {"prompt": "Count to two.", "reference": ""}]
    examples = drift_examples(tok, refs)
    # the blank answer still has one target: the end-of-sequence token
    assert [e.num_loss_tokens for e in examples] == [len(tok("hi there")["input_ids"]) + 1, 1]
    nll = entropy = 0.0
    n = 0
    for example in examples:
        start = example.labels.index(next(x for x in example.labels if x != -100))
        with torch.no_grad():
            logp = module.policy(torch.tensor([example.input_ids])).logits[0].double().log_softmax(-1)
        for t in range(start, len(example.input_ids)):
            nll -= logp[t - 1, example.input_ids[t]].item()
            entropy -= (logp[t - 1].exp() * logp[t - 1]).sum().item()
            n += 1
    probe = teacher_forced(module.token_stats, module.policy, examples, batch_size=2)
    assert probe.num_tokens == n
    assert probe.nll == pytest.approx(nll / n, abs=1e-4)
    assert probe.entropy == pytest.approx(entropy / n, abs=1e-4)
    assert drift_nll(module.token_stats, module.policy, examples) == pytest.approx(nll / n, abs=1e-4)


def test_batched_left_padded_greedy_generation_equals_a_plain_argmax_loop(tiny):
    module, tok = tiny
    prompts = render_prompts(tok, ["Hi", "A much longer question about numbers?"])
    texts = generate(module.policy.eval(), tok, prompts, max_new_tokens=5, batch_size=2)
    module.policy.train()
    for prompt, (text,) in zip(prompts, texts, strict=True):
        ids = list(prompt)
        with torch.no_grad():
            for _ in range(5):
                nxt = int(module.policy(torch.tensor([ids])).logits[0, -1].argmax())
                if nxt == tok.eos_token_id:
                    break
                ids.append(nxt)
        assert text == tok.decode(ids[len(prompt) :], skip_special_tokens=True)
    with pytest.raises(ValueError, match="temperature"):
        generate(module.policy, tok, prompts, 2, num_samples=2)


# ------------------------------------------------------------------------------- side effects
def test_an_evaluation_leaves_rng_weights_and_mode_untouched_and_is_reproducible(tiny, tmp_path):
    module, _ = tiny
    suite = EvalSuite(EvalConfig(**SMALL))
    weights = {k: v.clone() for k, v in module.policy.state_dict().items()}
    random.seed(5)
    np.random.seed(5)
    states = (torch.random.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    module.policy.train()
    first = suite.run(
        subject(module, base_is_policy=False),
        ["accuracy", "avg_k", "entropy", "mc", "drift", "if"],
        str(tmp_path / "d.jsonl"),
    )
    assert torch.equal(states[0], torch.random.get_rng_state())
    assert states[1] == random.getstate() and np.array_equal(states[2], np.random.get_state()[1])
    assert module.policy.training
    assert all(torch.equal(v, module.policy.state_dict()[k]) for k, v in weights.items())
    assert set(first) == {
        "eval/accuracy",
        "eval/answer_rate",
        "eval/avg@2",
        "eval/entropy",
        "ood/mc_acc",
        "ood/mc_acc_norm",
        "ood/drift_nll",
        "ood/if_strict",
    }
    assert (tmp_path / "d.jsonl").exists()  # tiny has no bundled base answers: generated and cached
    torch.manual_seed(123)  # a different training RNG must not change sampled metrics
    assert suite.run(
        subject(module, base_is_policy=False), ["avg_k", "drift"], str(tmp_path / "d.jsonl")
    ) == {k: first[k] for k in ("eval/avg@2", "ood/drift_nll")}


def fit_tiny(tmp_path, callbacks) -> tuple[PSFTModule, OldPolicy]:
    L.seed_everything(0)
    # attention dropout makes every training step draw from torch's RNG, so a leak would show
    module = PSFTModule(model="tiny", objective="psft", lr=1e-3, tiny_config={"attention_dropout": 0.1})
    data = PSFTDataModule(
        [VAL],
        tokenizer="tiny",
        fields=Fields(prompt="question", completion="answer"),
        batch_size=2,
        max_length=320,
        val_fraction=0,
    )
    old = OldPolicy(refresh_every_n_steps=2)
    trainer = L.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[old, *callbacks],
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, data)
    return module, old


def test_training_with_the_callback_takes_exactly_the_same_steps(tmp_path):
    plain, plain_old = fit_tiny(tmp_path / "a", [])
    evaluator = GenerationEval(
        every_n_steps=2,
        periodic=["accuracy", "avg_k", "entropy"],
        start=["avg_k"],
        final=["entropy", "if"],
        config=EvalConfig(**SMALL),
    )
    evaluated, evaluated_old = fit_tiny(tmp_path / "b", [evaluator])
    for (name, a), b in zip(
        plain.policy.state_dict().items(), evaluated.policy.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    for a, b in zip(
        plain_old.old.model.state_dict().values(), evaluated_old.old.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    assert (plain_old.refreshes, plain_old.last_refresh_step) == (evaluated_old.refreshes, 2)
    steps = [(step, sorted(m)) for step, m in evaluator.history]
    assert [s for s, _ in steps] == [0, 2, 4, 4]
    assert "eval/avg@2" in steps[0][1] and "ood/if_strict" in steps[3][1]
    assert "eval/entropy" not in steps[3][1]  # already taken at step 4 by the periodic evaluation
    assert evaluator.history[2][1]["eval/entropy"] > 0


def test_psft_validate_runs_the_final_sets(tmp_path):
    cli = run_cli(
        [
            "validate",
            "--config=configs/tiny.yaml",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            "--data.max_val_examples=2",
            "--trainer.callbacks+=psft_lightning.callbacks.GenerationEval",
            "--trainer.callbacks.final=[entropy,mc]",
            "--trainer.callbacks.config.num_mc=3",
            "--trainer.callbacks.config.num_probe=2",
        ]
    )
    evaluator = next(c for c in cli.trainer.callbacks if isinstance(c, GenerationEval))
    assert [(step, sorted(m)) for step, m in evaluator.history] == [
        (0, ["eval/entropy", "ood/mc_acc", "ood/mc_acc_norm", "perf/eval_seconds"])
    ]


def test_unknown_evaluation_sets_are_a_config_error():
    with pytest.raises(ConfigError, match="unknown evaluation set"):
        GenerationEval(final=["accuracy", "gsm8k"])


def test_per_item_values_give_the_logged_metrics_and_each_set_is_timed(tiny, tmp_path):
    """The study's frontier resamples these items: over all of them they must give what is logged."""
    module, _ = tiny
    suite = EvalSuite(EvalConfig(**SMALL))
    metrics = suite.run(
        subject(module, base_is_policy=False), ["mc", "drift", "if"], str(tmp_path / "d.jsonl")
    )
    items = suite.items
    assert len(items["ood/mc_acc"]) == SMALL["num_mc"] and len(items["ood/if_strict"]) == SMALL["num_if"]
    assert sum(items["ood/mc_acc"]) / len(items["ood/mc_acc"]) == metrics["ood/mc_acc"]
    assert sum(items["ood/if_strict"]) / len(items["ood/if_strict"]) == metrics["ood/if_strict"]
    nll, tokens = (sum(pair[i] for pair in items["ood/drift_nll"]) for i in (0, 1))
    assert nll / tokens == metrics["ood/drift_nll"]
    # the same number as the whole-set probe (one flat sum of the same log-probs)
    examples = suite.drift_examples(subject(module, base_is_policy=False), str(tmp_path / "d.jsonl"))
    assert metrics["ood/drift_nll"] == pytest.approx(
        drift_nll(module.token_stats, module.policy, examples), rel=1e-9
    )
    assert set(suite.seconds) == {"mc", "drift", "if"} and all(s > 0 for s in suite.seconds.values())
