"""Every place that raises a ConfigError or DataError reaches the user as one ``psft: error:`` line
with exit status 2, never as a traceback, whichever phase it runs in: while jsonargparse builds a
plugin, callback or the data module (it wraps errors in its own ValueError), in a Lightning hook, in a
callback, on resume, in ``psft export``, ``psft grpo``/``psft dpo``, ``psft eval`` or in the evaluation suite.

The sites are found in the source (AST), so a new raise site without a route here fails the test. Each
case replaces the function that holds the site with one that raises a ConfigError naming it, then runs
the ``psft`` entry point with arguments that reach that function; the probe message must come out.
"""

from __future__ import annotations

import ast
import functools
import json
import sys
from pathlib import Path

import datasets
import pytest

import psft_lightning
from psft_lightning.cli import main
from psft_lightning.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SRC = Path(psft_lightning.__file__).parent
TINY = str(REPO / "configs" / "tiny.yaml")
PLUGINS = str(REPO / "tests" / "plugins")
RAISED = ("ConfigError", "DataError")


def raise_sites() -> set[str]:
    """``module:Qualified.function`` of every function that raises a ConfigError or DataError."""
    sites = set()
    for file in sorted(SRC.rglob("*.py")):
        module = ".".join(("psft_lightning", *file.relative_to(SRC).with_suffix("").parts))
        module = module.removesuffix(".__init__")

        def visit(node: ast.AST, scope: list[str], module: str = module) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    visit(child, [*scope, child.name])
                    continue
                if isinstance(child, ast.Raise) and isinstance(child.exc, ast.Call):
                    func = child.exc.func
                    if isinstance(func, ast.Name) and func.id in RAISED:
                        sites.add(f"{module}:{'.'.join(scope)}")
                visit(child, scope)

        visit(ast.parse(file.read_text(encoding="utf-8")), [])
    return sites


RL_ARGS = ["--model", "{exported}", "--train-file", "{train}", "--out", "{out}", "--prompt-field=question"]
# arguments that reach each function (after a tiny one-step fit's own arguments, or instead of them)
ROUTES = {
    "fit": [],
    "name": ["--model.objective=ce"],
    "kl": ["--model.objective=kl"],
    "asft": ["--model.objective=asft"],
    "gift": ["--model.objective=gift"],
    "eaft": ["--model.objective=eaft"],
    "prob": ["--model.objective=prob"],
    "trsft": ["--model.objective=trsft"],
    "eksft": ["--model.objective=eksft"],
    "clipped": ["--trainer.callbacks+=psft_lightning.callbacks.ClippedTokens"],
    "warmup": ["--model.objective=psft_warmup"],
    "lookahead": ["--config={lookahead}"],
    "lora": ["--model.lora={r: 4}"],
    "packing": ["--data.packing=true"],
    "messages": ["--data.train_files=[{messages}]", "--data.val_files=[{messages}]"],
    "json": ["--data.train_files=[{json_object}]"],
    "saved": ["--data.train_files=[{saved}]"],
    "hub_data": ["--data.train_files=[hub:{hub_dir}]"],
    "fsdp": ["--trainer.strategy={class_path: psft_lightning.strategies.FSDP2Strategy}"],
    "plugin": ["--model.objective=psft_registered.Registered"],
    "embedded": ["--model.model=smollm2-135m-instruct"],
    "hub": ["--model.model=no-such-org/no-such-model"],
    "resume": ["--ckpt_path={checkpoint}"],
    "resume_lora": ["--model.lora={r: 4}", "--ckpt_path={lora_checkpoint}"],
    "last": ["--ckpt_path=last"],
    "eval": [
        "--trainer.callbacks+=psft_lightning.callbacks.GenerationEval",
        "--trainer.callbacks.start=[accuracy,mc,if]",
        "--trainer.callbacks.config.num_eval=2",
        "--trainer.callbacks.config.num_mc=2",
        "--trainer.callbacks.config.num_if=2",
        "--trainer.callbacks.config.max_new_tokens=2",
        "--trainer.callbacks.config.if_max_new_tokens=2",
    ],
    "select": [
        "--trainer.callbacks+=psft_lightning.study.selection.SelectCheckpoint",
        "--trainer.callbacks.task={dev_file: {val}, test_file: {val}}",
        "--trainer.callbacks.scoring={num_dev: 1, num_test: 1, k: 1, max_new_tokens: 2}",
        "--trainer.callbacks.out_file={out}/select.json",
    ],
    "export": ["export", "{checkpoint}", "{out}"],
    "export_sharded": ["export", "{sharded_checkpoint}", "{out}"],
    "grpo": ["grpo", *RL_ARGS],
    "dpo": ["dpo", *RL_ARGS],
    "lm_eval": ["eval", "{checkpoint}", "--tasks", "psft_general_knowledge", "--limit", "1"],
    "plot": ["plot", "{out}"],
    "study": ["study", "--budget=test", "--model=tiny", "--runs-dir={out}/runs", "--out={out}/page.md"],
    "report": [
        "study",
        "--report-only",
        "--runs-dir={study_record}",
        "--out={out}/page.md",
        "--plots={out}/p",
    ],
}
# subcommands that take no fit arguments
STANDALONE = ("export", "grpo", "dpo", "eval", "plot", "study")

SITES = {
    "psft_lightning.callbacks.old_policy:OldPolicy.__init__": "fit",
    "psft_lightning.callbacks.old_policy:OldPolicy._batches": "lookahead",
    "psft_lightning.callbacks.old_policy:OldPolicy._apply": "resume",
    "psft_lightning.callbacks.clipped_tokens:ClippedTokens.__init__": "clipped",
    "psft_lightning.callbacks.divergence:StopOnNonFinite.__init__": "fit",
    "psft_lightning.callbacks.periodic:PeriodicCheckpoint.__init__": "fit",
    "psft_lightning.checkpointing:check_resumable": "resume",
    "psft_lightning.stopping:stop_timeout": "fit",
    "psft_lightning.fit:check_accumulation": "fit",
    "psft_lightning.data.order:check_same_order": "resume",
    "psft_lightning.resume:resolve_checkpoint": "resume",
    "psft_lightning.checkpointing:AtomicCheckpointIO.load_checkpoint": "resume",
    "psft_lightning.module:check_optimizer_settings": "fit",
    "psft_lightning.objectives.eaft:EAFT.__init__": "eaft",
    "psft_lightning.objectives.gift:GIFT.__init__": "gift",
    "psft_lightning.owned:refuse_foreign": "export",
    "psft_lightning.study.follow_up:follow_up": "study",
    "psft_lightning.study.plots:find_runs": "plot",
    "psft_lightning.study.reproduce:outputs": "study",
    "psft_lightning.study.reproduce:prepare_plots": "study",
    "psft_lightning.study.reproduce:read_record": "report",
    "psft_lightning.study.reproduce:check_run_folders": "report",
    "psft_lightning.objectives.asft:ASFT.__init__": "asft",
    "psft_lightning.objectives.prob:Prob.__init__": "prob",
    "psft_lightning.fit:PSFTCLI.instantiate_trainer": "fit",
    "psft_lightning.fit:check_backend": "fit",
    "psft_lightning.fit:check_data_paths": "fit",
    "psft_lightning.objectives.trsft:TrSFT.__init__": "trsft",
    "psft_lightning.objectives.eksft:EKSFT.__init__": "eksft",
    "psft_lightning.data.batching:check_step_fits": "fit",
    "psft_lightning.data.batching:check_val_interval": "fit",
    "psft_lightning.data.lengths:fit_length": "fit",
    "psft_lightning.data.formats:check_format": "fit",
    "psft_lightning.data.formats:_chat_example.render": "fit",
    "psft_lightning.data.sources:_decode": "fit",
    "psft_lightning.data.sources:_load_saved": "saved",
    "psft_lightning.data.sources:_dataset_rows": "saved",
    "psft_lightning.data.datamodule:PSFTDataModule.__init__": "fit",
    "psft_lightning.data.collate:check_packing": "fit",
    "psft_lightning.data.formats:Fields.of": "fit",
    "psft_lightning.data.datamodule:PSFTDataModule.load_examples": "fit",
    "psft_lightning.data.formats:detect_format": "fit",
    "psft_lightning.data.formats:_string_field": "fit",
    "psft_lightning.data.formats:_messages_field": "messages",
    "psft_lightning.data.formats:_chat_example": "fit",
    "psft_lightning.data.formats:row_to_example": "fit",
    "psft_lightning.data.sources:_json_rows": "fit",
    "psft_lightning.data.sources:_refuse_single_object": "json",
    "psft_lightning.data.sources:read_rows": "fit",
    "psft_lightning.data.hub:parse_hub": "hub_data",
    "psft_lightning.data.hub:load_hub": "hub_data",
    "psft_lightning.evaluation.constraints:validate_checks": "eval",
    "psft_lightning.evaluation.ood:_field": "eval",
    "psft_lightning.evaluation.ood:load_mc": "eval",
    "psft_lightning.evaluation.suite:check_groups": "eval",
    "psft_lightning.evaluation.suite:EvalSuite.__init__": "eval",
    "psft_lightning.evaluation.suite:EvalSuite.rows": "eval",
    "psft_lightning.evaluation.suite:EvalSuite.finals": "eval",
    "psft_lightning.evaluation.suite:EvalSuite.pattern": "eval",
    "psft_lightning.export:_load_torch_file": "export",
    "psft_lightning.export:_hparams": "export",
    "psft_lightning.export:read_checkpoint": "export",
    "psft_lightning.export:_load_sharded": "export_sharded",
    "psft_lightning.export:rebuild_policy": "export",
    "psft_lightning.export:_prepare_out_dir": "export",
    "psft_lightning.export:export_checkpoint": "export",
    "psft_lightning.harness:_lm_eval": "lm_eval",
    "psft_lightning.harness:task_manager": "lm_eval",
    "psft_lightning.harness:evaluate": "lm_eval",
    "psft_lightning.harness:eval_main": "lm_eval",
    "psft_lightning.lora:LoraSettings.__post_init__": "lora",
    "psft_lightning.lora:lora_settings": "lora",
    "psft_lightning.lora:_import_peft": "lora",
    "psft_lightning.lora:apply_lora": "lora",
    "psft_lightning.lora:AdapterSnapshot.load_state_dict": "resume_lora",
    "psft_lightning.models:_embedded_location": "embedded",
    "psft_lightning.models:_pretrained_kwargs": "hub",
    "psft_lightning.models:load_tokenizer": "fit",
    "psft_lightning.models:load_model": "fit",
    "psft_lightning.models:tiny_model": "fit",
    "psft_lightning.models:backbone_and_head": "fit",
    "psft_lightning.models:check_packed_attention": "packing",
    "psft_lightning.module:PSFTModule.__init__": "fit",
    "psft_lightning.policies.twins:load_policy": "fit",
    "psft_lightning.policies.twins:PolicySettings.__post_init__": "fit",
    "psft_lightning.policies.twins:check_strategy": "fit",
    "psft_lightning.policies.twins:_sharder": "fsdp",
    "psft_lightning.step.train:train_micro_batch": "fit",
    "psft_lightning.objectives.base:register_objective.wrap": "plugin",
    "psft_lightning.objectives.base:_load_entry_points": "fit",
    "psft_lightning.objectives.base:objective_class": "name",
    "psft_lightning.objectives.base:build_objective": "fit",
    "psft_lightning.objectives.kl:KL.__init__": "kl",
    "psft_lightning.objectives.psft:check_clip": "fit",
    "psft_lightning.objectives.psft_warmup:PSFTWarmup.__init__": "warmup",
    "psft_lightning.resume:_newest_last": "last",
    "psft_lightning.rl.settings:TaskSettings.__post_init__": "grpo",
    "psft_lightning.rl.settings:GRPOSettings.__post_init__": "grpo",
    "psft_lightning.rl.settings:DPOSettings.__post_init__": "dpo",
    "psft_lightning.rl.model_dir:check_model_dir": "grpo",
    "psft_lightning.rl.requirements:require_trl": "grpo",
    "psft_lightning.rl.prompts:load_prompts": "dpo",
    "psft_lightning.rl.grpo:run_grpo": "grpo",
    "psft_lightning.rl.dpo:run_dpo": "dpo",
    "psft_lightning.sharding:decoder_layers": "fsdp",
    "psft_lightning.sequence_parallel:check_heads": "fit",
    "psft_lightning.strategies:FSDP2Strategy.setup_environment": "fsdp",
    "psft_lightning.study.selection:Task.compiled": "select",
    "psft_lightning.study.selection:Task.question": "study",
    "psft_lightning.study.progress:begin_study": "study",
    "psft_lightning.study.progress:earlier": "study",
    "psft_lightning.study.selection:SelectCheckpoint.on_train_end": "select",
}


def test_every_raise_site_has_a_route():
    assert raise_sites() == set(SITES), "add each new ConfigError/DataError site to SITES with a route"


def fit_args(root: Path, files: dict[str, str]) -> list[str]:
    return [
        "fit",
        "--config",
        TINY,
        f"--data.train_files=[{files['train']}]",
        f"--data.val_files=[{files['val']}]",
        "--data.batch_size=2",
        "--data.max_length=128",
        "--trainer.max_steps=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.num_sanity_val_steps=0",
        f"--trainer.default_root_dir={root}",
        f"--trainer.logger.init_args.save_dir={root}",
    ]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Small data files, and checkpoints (plain, LoRA, sharded) for the resume and export routes."""
    root = tmp_path_factory.mktemp("sweep")
    lines = (REPO / "data" / "arithmetic" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    paths = {"train": root / "train.jsonl", "val": root / "val.jsonl", "messages": root / "messages.jsonl"}
    paths["train"].write_text("\n".join(lines[:8]) + "\n", encoding="utf-8")
    paths["val"].write_text("\n".join(lines[8:12]) + "\n", encoding="utf-8")
    chat = '{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}\n'
    paths["messages"].write_text(chat * 8, encoding="utf-8")
    paths["json_object"] = root / "object.json"
    paths["json_object"].write_text('{\n  "question": "2+2?",\n  "answer": "4"\n}\n', encoding="utf-8")
    paths["lookahead"] = root / "lookahead.yaml"
    paths["lookahead"].write_text(
        "trainer:\n  callbacks:\n    - class_path: psft_lightning.callbacks.OldPolicy\n"
        "      init_args: {refresh_every_n_steps: 2, mode: lookahead}\n",
        encoding="utf-8",
    )
    out = {name: str(path) for name, path in paths.items()}
    out["saved"] = str(root / "saved")
    datasets.Dataset.from_list([json.loads(line) for line in lines[:8]]).save_to_disk(out["saved"])
    out["hub_dir"] = str(root / "hub")  # a local dataset directory, as load_dataset reads a hub repo
    Path(out["hub_dir"]).mkdir()
    Path(out["hub_dir"], "train.jsonl").write_text(
        paths["train"].read_text(encoding="utf-8"), encoding="utf-8"
    )
    for name, extra in (
        ("checkpoint", []),
        ("lora_checkpoint", ["--model.lora={r: 4}"]),
        ("sharded_checkpoint", ROUTES["fsdp"]),
    ):
        run_root = root / name
        assert exit_code([*fit_args(run_root, out), *extra]) == 0
        out[name] = str(run_root / "tiny" / "version_0" / "checkpoints" / "last.ckpt")
    out["study_record"] = str(root / "study")  # a record whose runs' folders are gone
    Path(out["study_record"]).mkdir()
    record = {"budget": "test", "seeds": [0], "chosen": {"psft": [{"folder": str(root / "gone")}]}}
    Path(out["study_record"], "results.json").write_text(json.dumps(record), encoding="utf-8")
    out["exported"] = str(root / "exported")
    assert exit_code(["export", out["checkpoint"], out["exported"]]) == 0
    return out


def exit_code(args: list[str]) -> int:
    """Run the ``psft`` entry point in this process; its exit status."""
    try:
        main(args)
    except SystemExit as stop:
        return stop.code
    return 0


def fill(arg: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        arg = arg.replace("{" + name + "}", value)
    return arg


def patch_everywhere(monkeypatch, site: str) -> None:
    """Replace the function holding ``site`` (in its module and wherever it was imported by name)."""
    module_name, qualname = site.split(":")
    parts = qualname.split(".")
    owner = sys.modules.get(module_name) or __import__(module_name, fromlist=["_"])
    for i, part in enumerate(parts[:-1]):
        if not hasattr(getattr(owner, part), parts[i + 1]):  # a closure: replace the function making it
            parts = parts[: i + 1]
            break
        owner = getattr(owner, part)
    original = getattr(owner, parts[-1])

    @functools.wraps(original)  # keeps the signature jsonargparse reads
    def probe(*args, **kwargs):
        raise ConfigError(f"sweep probe {site}")

    monkeypatch.setattr(owner, parts[-1], probe)
    if len(parts) == 1:
        for name, module in list(sys.modules.items()):
            if name.startswith("psft_lightning") and getattr(module, parts[-1], None) is original:
                monkeypatch.setattr(module, parts[-1], probe)


@pytest.mark.parametrize("site", sorted(SITES))
def test_raise_site_reaches_the_user_as_one_line(site, files, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(PLUGINS)
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PSFT_DATA_CACHE", str(tmp_path / "data_cache"))  # tokenise again: reach row sites
    route = [fill(arg, {**files, "out": str(tmp_path / "out")}) for arg in ROUTES[SITES[site]]]
    args = route if route[:1] and route[0] in STANDALONE else [*fit_args(tmp_path, files), *route]
    if SITES[site] == "last":
        assert exit_code(fit_args(tmp_path, files)) == 0  # a checkpoint for `last` to find
    capsys.readouterr()
    patch_everywhere(monkeypatch, site)
    code = exit_code(args)
    err = capsys.readouterr().err
    assert code == 2, f"{site}: not reached by route {SITES[site]!r}\n{err[-2000:]}"
    assert "psft: error:" in err and f"sweep probe {site}" in err
    assert "Traceback" not in err


# ------------------------------------------------------------------------------ faults from below
def below_faults() -> dict[str, BaseException]:
    """Real exceptions of the libraries under the CLI, each made by calling them as a run would."""
    import errno
    import pickle

    import lightning as L
    import torch

    def caught(action) -> BaseException:
        try:
            action()
        except Exception as err:  # noqa: BLE001 - the fault itself is the sample
            return err
        raise AssertionError(f"{action} raised nothing")

    text = REPO / "README.md"
    return {
        "trainer max_steps -5": caught(lambda: L.Trainer(max_steps=-5, logger=False)),
        "unknown strategy": caught(lambda: L.Trainer(strategy="nosuch", logger=False)),
        "strategy not installed": caught(lambda: L.Trainer(strategy="deepspeed", logger=False)),
        "AdamW betas": caught(
            lambda: torch.optim.AdamW([torch.zeros(1, requires_grad=True)], betas=(2.0, 0.9))
        ),
        "not a checkpoint": caught(lambda: torch.load(text, weights_only=True)),
        "weights_only refuses": caught(lambda: torch.load(_pickled_object(), weights_only=True)),
        "bad pickle": pickle.UnpicklingError("invalid load key"),
        "missing package": caught(lambda: __import__("no_such_optional_package")),
        "disk full": OSError(errno.ENOSPC, "No space left on device", "last.ckpt"),
        "read-only": OSError(errno.EROFS, "Read-only file system", "runs"),
        "permission": PermissionError(errno.EACCES, "Permission denied", "runs"),
        "symlink loop": OSError(errno.ELOOP, "Too many levels of symbolic links", "data.jsonl"),
        "no such file": FileNotFoundError(errno.ENOENT, "No such file or directory", "data.jsonl"),
    }


def _pickled_object() -> str:
    import argparse
    import tempfile

    import torch

    path = tempfile.mkstemp(suffix=".ckpt")[1]
    torch.save({"args": argparse.Namespace(x=1)}, path)
    return path


# each fault's family and exit status: a new kind of fault from below without a family here fails
EXPECTED = {
    "trainer max_steps -5": ("lightning setting", 2),
    "unknown strategy": ("lightning setting", 2),
    "strategy not installed": ("lightning setting", 4),
    "AdamW betas": ("optimizer argument", 2),
    "not a checkpoint": ("checkpoint format", 2),
    "weights_only refuses": ("checkpoint format", 2),
    "bad pickle": ("checkpoint format", 2),
    "missing package": ("missing package", 4),
    "disk full": ("file system", 4),
    "read-only": ("file system", 4),
    "permission": ("file system", 4),
    "symlink loop": ("file system", 2),
    "no such file": ("file system", 2),
}


def test_every_fault_from_below_has_a_family_and_every_family_a_fault():
    from psft_lightning.boundary import FAMILIES, classify

    faults = below_faults()
    assert set(faults) == set(EXPECTED)
    found = {name: classify(err) for name, err in faults.items()}
    unmapped = [name for name, got in found.items() if got is None]
    assert not unmapped, f"faults without a family in boundary.FAMILIES: {unmapped}"
    assert {name: got[:2] for name, got in found.items()} == EXPECTED
    covered = {family for family, _ in EXPECTED.values()} | {"psft"}
    assert covered == {family.name for family in FAMILIES}, "each family needs a fault in below_faults()"


def test_a_bug_keeps_its_traceback_and_says_so(capsys):
    from psft_lightning.boundary import BUG_LINE, error_boundary

    with pytest.raises(SystemExit) as stop, error_boundary():
        {}["no such key"]  # noqa: B018 - an internal bug
    err = capsys.readouterr().err
    assert (
        stop.value.code == 1 and "Traceback" in err and "KeyError" in err and err.rstrip().endswith(BUG_LINE)
    )
