"""``psft eval``: score a checkpoint, an exported model or a named model with lm-eval (the harness the
field reports in), the bundled probes included as local tasks.

The model is built here (a Lightning checkpoint through ``export.read_checkpoint``/``rebuild_policy``,
anything else through ``models.load_model``) and handed to lm-eval's ``HFLM`` as an object, so lm-eval
never downloads a model. Needs the ``eval`` extra: ``pip install -e ".[eval]"``.
"""

from __future__ import annotations

import difflib
import json
import logging
from pathlib import Path
from typing import Any

from torch import nn

from psft_lightning.commands import command_parser
from psft_lightning.errors import ConfigError
from psft_lightning.evaluation.suite import EvalConfig
from psft_lightning.export import SHARDED_METADATA, read_checkpoint, rebuild_policy
from psft_lightning.models import load_model, load_tokenizer

log = logging.getLogger(__name__)

TASK_DIR = Path(__file__).parent / "evaluation" / "lm_eval_tasks"
LOCAL_TASKS = ("psft_general_knowledge", "psft_arithmetic")
LOCAL_NAMES = (*LOCAL_TASKS, "psft")  # the tasks and the tag they share


def _lm_eval():
    try:
        import lm_eval
    except ImportError as err:
        raise ConfigError(
            'psft eval needs lm-eval: pip install -e ".[eval]" (or pip install lm-eval)'
        ) from err
    return lm_eval


def is_checkpoint(source: str) -> bool:
    """A Lightning checkpoint of ours: a ``.ckpt`` file or a sharded checkpoint directory."""
    path = Path(source)
    return (path.is_file() and path.suffix == ".ckpt") or (path / SHARDED_METADATA).is_file()


def load_for_eval(source: str) -> tuple[nn.Module, Any]:
    """The model (in eval mode, LoRA merged) and its tokenizer for a checkpoint, an HF directory, a
    ``.gguf`` file or a model name (``smollm2-135m-instruct``, ``tiny``, a hub id)."""
    if is_checkpoint(source):
        hparams, weights = read_checkpoint(source)
        policy, wrapper = rebuild_policy(hparams, weights)
        model, name = (wrapper.merge_and_unload() if wrapper is not None else policy), hparams["model"]
    else:
        model, name = load_model(source), source
    return model.eval(), load_tokenizer(name)


def task_manager(tasks: list[str], ood_dir: str, arithmetic_file: str):
    """lm-eval's TaskManager over the bundled task definitions; lm-eval's own tasks are indexed only
    when a requested name is not a bundled one (indexing them takes seconds)."""
    from lm_eval.tasks import TaskManager

    metadata = {"ood_dir": ood_dir, "arithmetic_file": arithmetic_file}
    local = set(tasks) <= set(LOCAL_NAMES)
    manager = TaskManager(include_path=str(TASK_DIR), include_defaults=not local, metadata=metadata)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        close = {t: difflib.get_close_matches(t, manager.all_tasks, n=1) for t in unknown}
        hints = "; ".join(f"{t!r}: did you mean {c[0]!r}?" for t, c in close.items() if c)
        raise ConfigError(
            f"Unknown lm-eval task(s) {unknown}. Bundled: {', '.join(LOCAL_TASKS)} (tag psft); any task of "
            f"`lm-eval ls tasks` also works where its dataset can be downloaded. {hints}".strip()
        )
    return manager


def evaluate(
    model: nn.Module,
    tokenizer,
    tasks: list[str],
    limit: int | None = None,
    batch_size: int = 8,
    apply_chat_template: bool = False,
    log_samples: bool = False,
    ood_dir: str = EvalConfig.ood_dir,
    arithmetic_file: str = EvalConfig.eval_file,
) -> dict[str, Any]:
    """lm-eval's ``simple_evaluate`` of ``model`` on ``tasks`` (zero-shot, greedy, lm-eval's seeds)."""
    lm_eval = _lm_eval()
    from lm_eval.models.huggingface import HFLM

    manager = task_manager(tasks, ood_dir, arithmetic_file)
    device = str(next(model.parameters()).device)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    try:
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=tasks,
            limit=limit,
            task_manager=manager,
            apply_chat_template=apply_chat_template,
            log_samples=log_samples,
        )
    except (ConnectionError, OSError) as err:
        remote = [t for t in tasks if t not in LOCAL_NAMES]
        if not remote:
            raise
        raise ConfigError(
            f"lm-eval could not load the dataset of task(s) {remote}: they download it from the Hugging "
            f"Face hub, which this machine cannot reach ({type(err).__name__}). The bundled tasks "
            f"({', '.join(LOCAL_TASKS)}) run offline."
        ) from err
    return results


def write_results(results: dict[str, Any], out: str | Path) -> Path:
    """The results as JSON (lm-eval's own encoder for what json cannot write)."""
    from lm_eval.utils import handle_non_serializable

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False))
    return out


def eval_main(args: list[str]) -> dict[str, Any]:
    """``psft eval CHECKPOINT_OR_DIR --tasks ... [--limit N] [--batch-size B] [--out results.json]``; returns
    lm-eval's results."""
    parser = command_parser(
        prog="psft eval",
        description="Score a model with lm-eval: a .ckpt (or sharded checkpoint directory) of psft fit, a "
        "directory written by psft export, a .gguf file or a model name (smollm2-135m-instruct). The "
        f"bundled probes are the tasks {', '.join(LOCAL_TASKS)} (tag psft).",
    )
    parser.add_argument("model", help="a checkpoint, an exported Hugging Face directory or a model name")
    parser.add_argument("--tasks", required=True, help="comma-separated lm-eval task names or tags")
    parser.add_argument("--limit", type=int, default=None, help="first N items of each task")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--apply-chat-template", action="store_true", help="prompt through the tokenizer's chat template"
    )
    parser.add_argument("--ood-dir", default=EvalConfig.ood_dir, help="folder of general_knowledge.jsonl")
    parser.add_argument("--arithmetic-file", default=EvalConfig.eval_file, help="rows of psft_arithmetic")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument(
        "--log-samples", action="store_true", help="also write each item's prompt, responses and scores"
    )
    ns = parser.parse_args(args)
    tasks = [t.strip() for t in ns.tasks.split(",") if t.strip()]
    if not tasks:
        raise ConfigError("--tasks names no task")
    _lm_eval()
    model, tokenizer = load_for_eval(ns.model)
    results = evaluate(
        model,
        tokenizer,
        tasks,
        ns.limit,
        ns.batch_size,
        ns.apply_chat_template,
        ns.log_samples,
        ood_dir=ns.ood_dir,
        arithmetic_file=ns.arithmetic_file,
    )
    from lm_eval.utils import make_table

    print(make_table(results))
    if ns.out:
        log.info("wrote %s", write_results(results, ns.out))
    return results
