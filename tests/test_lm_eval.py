"""lm-eval over the bundled probes (``psft eval``): its multiple-choice acc/acc_norm equal the
built-in scorer's on the same items, its answer filter is the built-in extraction, and a trained
checkpoint and its export score the same as the module they came from."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_run import train_tiny

from psft_lightning.cli import main
from psft_lightning.data.sources import read_rows
from psft_lightning.evaluation import EvalConfig, accuracy, mc_scores, render_prompts
from psft_lightning.evaluation.answers import ANSWER_PATTERN, extract_answer
from psft_lightning.evaluation.ood import load_mc, mc_context, mc_example
from psft_lightning.evaluation.probes import sequence_logprobs
from psft_lightning.export import export_checkpoint
from psft_lightning.harness import evaluate, task_manager
from psft_lightning.models import load_model, load_tokenizer
from psft_lightning.module import PSFTModule

pytest.importorskip("lm_eval")

MC_FILE = "data/ood/general_knowledge.jsonl"
N = 12


@pytest.fixture(scope="module")
def tiny():
    module = PSFTModule(model="tiny", objective="ce")
    module.configure_model()
    return module, load_tokenizer("tiny")


def test_lm_eval_mc_acc_and_acc_norm_equal_the_built_in_scorer(tiny):
    module, tok = tiny
    items = load_mc(MC_FILE, limit=N)
    built_in = mc_scores(module.token_stats, module.policy, tok, items, batch_size=16)
    results = evaluate(
        module.policy, tok, ["psft_general_knowledge"], limit=N, batch_size=16, log_samples=True
    )
    scores = results["results"]["psft_general_knowledge"]
    assert (scores["acc,none"], scores["acc_norm,none"]) == (built_in["acc"], built_in["acc_norm"])
    assert scores["acc,none"] != scores["acc_norm,none"]  # the length normalisation decides some items
    # the same log-likelihood per choice, not only the same argmax
    examples = [mc_example(tok, mc_context(it.question), " " + c) for it in items for c in it.choices]
    ours = torch.tensor(
        [lp.sum().item() for lp in sequence_logprobs(module.token_stats, module.policy, examples)]
    )
    torch.testing.assert_close(logliks(results), ours.double(), rtol=1e-4, atol=1e-4)


def logliks(results: dict) -> torch.Tensor:
    """lm-eval's log-likelihood of every choice of every item, in item order."""
    samples = sorted(results["samples"]["psft_general_knowledge"], key=lambda s: s["doc_id"])
    return torch.tensor([resp[0][0] for s in samples for resp in s["resps"]], dtype=torch.float64)


def test_the_arithmetic_task_extracts_answers_as_the_built_in_scorer_does():
    from lm_eval.filters.extraction import RegexFilter

    manager = task_manager(["psft_arithmetic"], EvalConfig.ood_dir, EvalConfig.eval_file)
    task = manager.load_task_or_group(["psft_arithmetic"])["psft_arithmetic"]
    settings = {k: v for k, v in task.config.filter_list[0]["filter"][0].items() if k != "function"}
    assert settings["regex_pattern"] == ANSWER_PATTERN.pattern
    texts = ["7 + 5 = 12.\nThe answer is 12.", "The answer is 3. No: The answer is -4.", "It is 9.", ""]
    filtered = list(RegexFilter(**settings).apply([[t] for t in texts], [{}] * len(texts)))
    assert [f[0] for f in filtered] == ["12", "-4", "[invalid]", "[invalid]"]
    assert [extract_answer(t) for t in texts] == [12, -4, None, None]


def test_the_arithmetic_task_prompts_as_training_does_and_scores_as_the_built_in_accuracy(tiny):
    module, tok = tiny
    results = evaluate(
        module.policy, tok, ["psft_arithmetic"], limit=2, apply_chat_template=True, log_samples=True
    )
    samples = sorted(results["samples"]["psft_arithmetic"], key=lambda s: s["doc_id"])
    rows = [row for row, _ in read_rows(EvalConfig.eval_file)][:2]
    prompts = [tok.decode(ids) for ids in render_prompts(tok, [row["question"] for row in rows])]
    assert [s["arguments"][0][0] for s in samples] == prompts
    texts = [s["resps"][0][0] for s in samples]
    built_in = accuracy(texts, [row["final"] for row in rows])
    assert results["results"]["psft_arithmetic"]["exact_match,last_answer"] == built_in


def test_psft_eval_scores_a_checkpoint_and_its_export_as_the_trained_module(tmp_path, arithmetic_files):
    module, ckpt = train_tiny(tmp_path / "run", arithmetic_files, steps=2, objective="ce", lr=1e-2)
    tok = load_tokenizer("tiny")
    args = dict(tasks=["psft_general_knowledge"], limit=N, batch_size=16, log_samples=True)
    direct = evaluate(module.policy.eval(), tok, **args)
    untrained = evaluate(load_model("tiny").eval(), tok, **args)
    assert not torch.allclose(logliks(direct), logliks(untrained), atol=1e-2)
    hf_dir = export_checkpoint(ckpt, tmp_path / "hf")
    for source in (ckpt, hf_dir):
        out = tmp_path / f"{source.name}.json"
        flags = ["--tasks", "psft_general_knowledge", "--limit", str(N), "--log-samples", "--out", str(out)]
        main(["eval", str(source), *flags])
        written = json.loads(out.read_text())
        assert written["results"] == direct["results"]
        torch.testing.assert_close(logliks(written), logliks(direct), rtol=1e-5, atol=1e-5)


def test_a_missing_probe_file_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["eval", "tiny", "--tasks", "psft_general_knowledge", "--ood-dir", str(tmp_path)])
    assert stop.value.code == 2
    assert f"psft: error: {tmp_path}/general_knowledge.jsonl: no such file" in capsys.readouterr().err
