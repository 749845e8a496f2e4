"""Side-by-side speed and memory of psft-lightning's training step, in one run, on the same data.

Cases (each in a fresh subprocess, so each peak memory is its own):
- head:      naive full-logits CE vs our chunked CE on a 152k-vocabulary Llama at length 2048;
- objective: CE vs PSFT (snapshot old policy, a non-refresh step) vs KL on SmolLM2-135M;
- packing:   padded vs packed micro-batches of a variable-length mix;
- vocab:     the built-in chunked KL vs the same KL written as a plugin's vocabulary function
             (``Needs(vocab_fn=...)``, evaluated by ``ops.chunked_vocab_values``) on the 152k vocabulary;
- trl:       TRL's SFTTrainer on the same model, data, batch and length as our CE;
- data:      (``--data-case TOKENS``, run alone) tokenisation: today's loop vs the Arrow cache.

It writes one JSON (ratios and pass/fail per target) and a Markdown report. Timing is wall-clock
per optimizer step after warm-up; tokens/s counts real (non-padding) input tokens. Memory is the
peak RSS of the process during the measured steps (CPU) or ``torch.cuda.max_memory_allocated``.

    python scripts/benchmark.py                 # default CPU run (~15 min on 2 cores)
    python scripts/benchmark.py --quick         # smoke run (< 2 min)
    python scripts/benchmark.py --device cuda --dtype bf16 --compile
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PAD = 0
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}
TARGETS = {
    "head_memory": ("peak memory, ours / naive CE (152k vocab)", "<=", 0.40),
    "head_speed": ("tokens/s, ours / naive CE (152k vocab)", ">=", 0.95),
    "psft_vs_ce": ("step time, PSFT / CE", "<=", 1.30),
    "kl_vs_ce": ("step time, KL / CE", "<=", 1.40),
    "packed_vs_padded": ("tokens/s, packed / padded", ">=", 1.5),
    "ours_vs_trl_speed": ("tokens/s, our CE / TRL SFTTrainer", ">=", 1.2),
    "ours_vs_trl_memory": ("peak memory, our CE / TRL SFTTrainer", "<=", 1.0),
    "vocab_memory": ("peak memory, KL as a vocabulary function / built-in KL (152k vocab)", "<=", 1.0),
}


# ----------------------------------------------------------------------------------------- sizes
def sizes(args) -> dict[str, dict]:
    """Model configurations and the batch shape each is measured at."""
    big = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4}
    out = {
        "llama-152k": {
            "model": "tiny",
            "tiny_config": {**big, "vocab_size": 152064, "max_position_embeddings": 4096},
            "batch": args.big_batch,
            "seq": args.big_seq,
        },
        "smollm2-135m": {"model": "smollm2-135m-instruct", "batch": args.small_batch, "seq": args.small_seq},
        "tiny": {"model": "tiny", "tiny_config": {"max_position_embeddings": 4096}, "batch": 2, "seq": 64},
        "llama-0.5b": {  # GPU MFU size: Qwen2.5-0.5B-like shape
            "model": "tiny",
            "tiny_config": {
                "vocab_size": 151936,
                "hidden_size": 896,
                "intermediate_size": 4864,
                "num_hidden_layers": 24,
                "num_attention_heads": 14,
                "num_key_value_heads": 2,
                "max_position_embeddings": 4096,
                "tie_word_embeddings": True,
            },
            "batch": args.big_batch,
            "seq": args.big_seq,
        },
    }
    return out


def plan(args) -> list[dict]:
    """The cases of this run. A case runs in one process; its variants are timed round-robin.
    The head variants get a process each, since their peak memories are compared."""
    if args.smallest:
        head, objective, packing = "tiny", "tiny", "tiny"
    elif args.quick:
        head, objective, packing = "llama-152k", "tiny", "tiny"
    else:
        head, objective, packing = "llama-152k", args.objective_model, args.objective_model

    def case(group: str, size: str, *variants: tuple[str, str]) -> dict:
        return {
            "group": group,
            "size": size,
            "variants": [{"variant": v, "objective": o} for v, o in variants],
        }

    cases = [
        case("head", head, ("naive", "ce")),
        case("head", head, ("ours", "ce")),
        case("objective", objective, ("ours", "ce"), ("ours", "psft"), ("ours", "kl")),
        case("packing", packing, ("padded", "ce"), ("packed", "ce")),
        case("vocab", head, ("ours", "kl")),
        case("vocab", head, ("vocab", "kl")),
    ]
    if args.device == "cuda" and not args.quick and not args.smallest:
        cases.append(case("mfu", "llama-0.5b", ("ours", "ce"), ("ours", "psft")))
    if not args.no_trl:
        cases.append(case("trl", head, ("trl", "ce")))
        if objective != head:
            # our CE alone in its process (the objective case also holds an old policy and a reference)
            cases.append(case("alone", objective, ("ours", "ce")))
            cases.append(case("trl", objective, ("trl", "ce")))
    return cases


# ------------------------------------------------------------------------------------------ data
def example_lengths(group: str, batch: int, seq: int) -> list[int]:
    """Full-length examples, or (packing) a fixed long-tailed mix of lengths up to ``seq``."""
    if group != "packing":
        return [seq] * batch
    n = max(batch, 2) * 4
    # log-normal-like mix (seeded): many short answers, a few long ones, as in chat SFT data
    g = torch.Generator().manual_seed(0)
    raw = torch.exp(torch.randn(n, generator=g) * 0.8) * seq / 5
    return [int(min(seq, max(8, x))) for x in raw.tolist()]


def make_examples(lengths: list[int], vocab: int, seed: int = 0):
    from psft_lightning.data.formats import IGNORE_INDEX, Example

    g = torch.Generator().manual_seed(seed)
    examples = []
    for n in lengths:
        ids = torch.randint(1, min(vocab, 32000), (n,), generator=g).tolist()
        prompt = max(1, n // 4)
        examples.append(Example(ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return examples


# ------------------------------------------------------------------------------------ measuring
class PeakMemory:
    """Peak resident memory while active (sampled every ms on CPU), or CUDA max allocated."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return self
        import psutil

        proc = psutil.Process()

        def sample():
            while not self._stop.is_set():
                self.peak = max(self.peak, proc.memory_info().rss)
                time.sleep(0.001)

        self.peak = proc.memory_info().rss
        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def model_flops_per_token(model, seq: int) -> float:
    """6 x parameters (embedding lookup excluded, LM head included) + causal attention."""
    config = model.config
    n = sum(p.numel() for p in model.parameters())
    if not getattr(config, "tie_word_embeddings", False):
        n -= model.get_input_embeddings().weight.numel()
    attention = 6 * config.num_hidden_layers * config.hidden_size * seq  # 12 L H S, halved: causal
    return 6 * n + attention


def peak_flops(device: str, override: float | None) -> float | None:
    if override:
        return override
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


# ------------------------------------------------------------------------------------- one case
def build_module(variants: list[dict], spec: dict, args):
    """One policy for all variants of a case (plus the reference and old policy they need)."""
    from psft_lightning.module import PSFTModule
    from psft_lightning.policies import frozen

    objectives = {v["objective"] for v in variants}
    module = PSFTModule(
        model=spec["model"],
        objective="kl" if "kl" in objectives else "ce",
        tiny_config=spec.get("tiny_config"),
        chunk_size=args.chunk_size,
        attn_implementation=args.attn,
    )
    module.configure_model()
    module.policy.to(args.device)
    old = frozen(module.policy) if "psft" in objectives else None
    if module.reference is not None:
        module.reference.to(args.device)
        with torch.no_grad():  # a reference that differs, so the KL and its gradient are not trivial
            for p in module.reference.parameters():
                p.mul_(1.01)
    if args.compile:
        for model in (module.policy, old, module.reference):
            if model is not None:
                for layer in model.base_model.layers:
                    layer.compile()
    return module, old


def vocab_reverse_kl(logits, ref_logits, targets):
    """KL(pi || pi_ref) per token as a plugin author writes it: plain PyTorch on one chunk's logits."""
    logp = torch.log_softmax(logits, -1)
    return (logp.exp() * (logp - torch.log_softmax(ref_logits, -1))).sum(-1)


def naive_stats(module, batch):
    """The full-logits path: ``[tokens, vocab]`` logits, fp32 log-softmax, gather."""
    from psft_lightning.ops import naive_token_stats

    targets = batch["labels"][:, 1:]
    mask = targets != -100
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    logits = module.policy(**inputs, use_cache=False).logits[:, :-1][mask]
    return naive_token_stats(logits, targets[mask])


def run_ours(case: dict, spec: dict, args) -> list[dict]:
    """Time the case's variants round-robin, one optimizer step each per round, so that a change in
    machine load hits all of them alike; memory is each variant's peak during its own steps."""
    from psft_lightning.data.collate import collate, collate_packed
    from psft_lightning.objectives import Needs, ObjectiveInputs, build_objective

    variants = case["variants"]
    module, old = build_module(variants, spec, args)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    vocab = module.policy.config.vocab_size
    examples = make_examples(example_lengths(case["group"], spec["batch"], spec["seq"]), vocab)
    optimizer = torch.optim.AdamW(module.policy.parameters(), lr=1e-5)
    autocast = torch.autocast(args.device, dtype=dtype) if dtype != torch.float32 else nullcontext()

    def make_step(variant: dict):
        packed = variant["variant"] == "packed"
        batch = collate_packed(examples, PAD, spec["seq"]) if packed else collate(examples, PAD)
        batch = {k: v.to(args.device) for k, v in batch.items()}
        n_loss = float((batch["labels"][:, 1:] != -100).sum())
        objective = build_objective(variant["objective"])
        needs = objective.needs()
        if variant["variant"] == "vocab":
            needs = Needs(vocab_fn=vocab_reverse_kl, vocab_ref=True)
        reference = module.reference if needs.reference else None

        def step():
            with autocast:
                if variant["variant"] == "naive":
                    stats = naive_stats(module, batch)
                else:
                    stats = module.token_stats(module.policy, batch, reference, needs)
                with torch.no_grad():
                    old_logprobs = module.token_stats(old, batch).logprobs if needs.old_policy else None
                out = objective(
                    ObjectiveInputs(
                        stats.logprobs,
                        torch.ones_like(stats.logprobs, dtype=torch.bool),
                        num_tokens=n_loss,
                        old_logprobs=old_logprobs,
                        ref_kl=stats.vocab if variant["variant"] == "vocab" else stats.ref_kl,
                    )
                )
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step, batch

    steps = [make_step(v) for v in variants]
    for step, _ in steps:
        for _ in range(args.warmup):
            step()
    times: list[list[float]] = [[] for _ in variants]
    peaks = [0] * len(variants)
    for _ in range(args.steps):
        for i, (step, _) in enumerate(steps):
            with PeakMemory(args.device) as memory:
                sync(args.device)
                start = time.perf_counter()
                step()
                sync(args.device)
                times[i].append(time.perf_counter() - start)
            peaks[i] = max(peaks[i], memory.peak)
    flops = model_flops_per_token(module.policy, spec["seq"])
    peak_rate = peak_flops(args.device, args.peak_flops)
    results = []
    for (_, batch), t, peak in zip(steps, times, peaks, strict=True):
        result = summary(t, int(batch["num_input_tokens"]), peak, batch["input_ids"].numel())
        result["model_flops_per_token"] = flops
        if peak_rate:
            result["mfu"] = flops * result["tokens_per_s"] / peak_rate
        results.append(result)
    return results


def run_trl(case: dict, spec: dict, args) -> dict:
    """TRL's SFTTrainer on the same pre-tokenised examples (completion-only loss), same batch/length."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from psft_lightning.models import load_model, load_tokenizer

    model = load_model(spec["model"], spec.get("tiny_config"))
    if getattr(model, "hf_quantizer", None) is not None and not model.hf_quantizer.is_trainable:
        # a GGUF file is dequantized to float at load, but transformers keeps the quantizer flag, which
        # Trainer refuses; the weights are plain float tensors, as in our runs
        model.is_quantized, model.hf_quantizer = False, None
    if args.attn:
        model.set_attn_implementation(args.attn)
    tokenizer = load_tokenizer(spec["model"] if spec["model"] != "tiny" else "tiny")
    examples = make_examples(example_lengths("trl", spec["batch"], spec["seq"]), model.config.vocab_size)
    rows = [
        {"input_ids": e.input_ids, "completion_mask": [int(x != -100) for x in e.labels]} for e in examples
    ]
    n_steps = args.warmup + args.steps
    dataset = Dataset.from_list(rows * n_steps)

    class Timer(TrainerCallback):
        """Times each optimizer step; memory is watched from the first measured step on."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self.memory = PeakMemory(args.device)
            self.watching = False

        def on_step_begin(self, *_, **__):
            sync(args.device)
            if not self.watching and len(self.times) == args.warmup:
                self.memory.__enter__()
                self.watching = True
            self.start = time.perf_counter()

        def on_step_end(self, *_, **__):
            sync(args.device)
            self.times.append(time.perf_counter() - self.start)

    timer = Timer()
    config = SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="psft-bench-trl-"),
        per_device_train_batch_size=spec["batch"],
        max_length=spec["seq"],
        max_steps=n_steps,
        learning_rate=1e-5,
        completion_only_loss=True,
        packing=False,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=args.device == "cpu",
        bf16=args.dtype == "bf16",
        dataloader_num_workers=0,
        torch_compile=args.compile,
        seed=0,
    )
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[timer]
    )
    trainer.train()
    timer.memory.__exit__(None, None, None)
    tokens = sum(len(e.input_ids) for e in examples)
    return summary(timer.times[args.warmup :], tokens, timer.memory.peak, tokens)


def summary(times: list[float], tokens: int, peak: int, positions: int) -> dict:
    step = sorted(times)[len(times) // 2]  # median step
    return {
        "step_s": step,
        "step_times_s": times,
        "tokens": tokens,
        "positions": positions,
        "tokens_per_s": tokens / step,
        "peak_mem_mb": peak / 2**20,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_case(case: dict, args) -> list[dict]:
    """One result per variant of ``case``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = sizes(args)[case["size"]]
    if case["group"] == "trl":
        return [run_trl(case, spec, args)]
    return run_ours(case, spec, args)


def run_isolated(case: dict, args, argv: list[str]) -> list[dict]:
    """One case in a fresh interpreter (its own memory high-water mark), result as the last JSON line."""
    cmd = [sys.executable, __file__, *argv, "--case", json.dumps(case)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.case_timeout)
    if proc.returncode != 0:
        error = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
        return [{"error": error} for _ in case["variants"]]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_data_case(args) -> dict:
    """The ``data`` case alone (scripts/bench_data.py): today's loop vs the Arrow cache on a synthetic
    set of ``--data-case`` tokens; its result becomes the ``data`` entry of ``--out``."""
    sys.path.insert(0, str(Path(__file__).parent))
    import bench_data

    result = bench_data.run(args.data_case, num_proc=args.data_num_proc, repeats=2)
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {}
    report["data"] = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), **result}
    out.write_text(json.dumps(report, indent=2))
    for key, v in result["goals"].items():
        print(f"{'MET ' if v['met'] else 'MISS'} data {key}: {v['value']} (goal {v['target']})")
    return report


# -------------------------------------------------------------------------------------- report
def find(results: list[dict], **match) -> dict | None:
    for r in results:
        if all(r["case"].get(k) == v for k, v in match.items()) and "error" not in r["result"]:
            return r["result"]
    return None


def ratios(results: list[dict], args) -> dict[str, float]:
    """The targets' ratios; each is measured within one size, side by side."""
    out = {}
    naive, ours = find(results, group="head", variant="naive"), find(results, group="head", variant="ours")
    if naive and ours:
        out["head_memory"] = ours["peak_mem_mb"] / naive["peak_mem_mb"]
        out["head_speed"] = ours["tokens_per_s"] / naive["tokens_per_s"]
    ce = find(results, group="objective", objective="ce")
    for name in ("psft", "kl"):
        other = find(results, group="objective", objective=name)
        if ce and other:
            out[f"{name}_vs_ce"] = other["step_s"] / ce["step_s"]
    builtin = find(results, group="vocab", variant="ours")
    vocab = find(results, group="vocab", variant="vocab")
    if builtin and vocab:
        out["vocab_memory"] = vocab["peak_mem_mb"] / builtin["peak_mem_mb"]
    padded = find(results, group="packing", variant="padded")
    packed = find(results, group="packing", variant="packed")
    if padded and packed:
        out["packed_vs_padded"] = packed["tokens_per_s"] / padded["tokens_per_s"]
    for r in results:
        if r["case"]["group"] != "trl" or "error" in r["result"]:
            continue
        size = r["case"]["size"]
        mine = find(results, group="head", variant="ours", size=size) or find(
            results, group="alone", size=size
        )
        if mine:
            out[f"ours_vs_trl_speed[{size}]"] = mine["tokens_per_s"] / r["result"]["tokens_per_s"]
            out[f"ours_vs_trl_memory[{size}]"] = mine["peak_mem_mb"] / r["result"]["peak_mem_mb"]
    return out


def verdicts(values: dict[str, float]) -> dict[str, dict]:
    out = {}
    for key, value in values.items():
        base = key.split("[")[0]
        what, op, bound = TARGETS[base]
        ok = value <= bound if op == "<=" else value >= bound
        out[key] = {"what": what, "value": round(value, 3), "target": f"{op} {bound}", "met": ok}
    return out


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        "# Benchmarks",
        "",
        "The Targets, Cases and Notes sections are written by `scripts/benchmark.py` from one run on",
        "the same synthetic token data (sections after them record other runs): cases ran one after",
        "another, each in a fresh process; the variants of one case (CE/PSFT/KL, padded/packed) share",
        "its process and",
        "are timed round-robin. Step time is the median wall-clock optimizer step after warm-up;",
        "tokens/s counts real input tokens (no padding); memory is the peak RSS of the process during",
        "the measured steps (CPU) or `torch.cuda.max_memory_allocated` (CUDA).",
        "",
        f"- date: {report['date']}",
        f"- device: {env['device']} ({env['cpu_count']} CPU cores, {env['threads']} torch threads)",
        f"- dtype: {env['dtype']}, torch.compile: {env['compile']}, torch {env['torch']}",
        f"- command: `{report['command']}`",
        "",
        "## Targets",
        "",
        "| target | value | goal | met |",
        "|---|---|---|---|",
    ]
    for key, v in report["targets"].items():
        lines.append(
            f"| {v['what']} `{key}` | {v['value']} | {v['target']} | {'yes' if v['met'] else 'NO'} |"
        )
    lines += [
        "",
        "## Cases",
        "",
        "| group | model | variant | objective | examples x max len | step s | tokens/s | peak MB | MFU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        c, res = r["case"], r["result"]
        shape = f"{len(example_lengths(c['group'], r['batch'], r['seq']))} x {r['seq']}"
        if "error" in res:
            lines.append(
                f"| {c['group']} | {c['size']} | {c['variant']} | {c['objective']} | {shape} "
                f"| error: {res['error'][:80]} | | | |"
            )
            continue
        mfu = f"{100 * res['mfu']:.1f}%" if "mfu" in res else "-"
        lines.append(
            f"| {c['group']} | {c['size']} | {c['variant']} | {c['objective']} | {shape} "
            f"| {res['step_s']:.2f} | {res['tokens_per_s']:.0f} | {res['peak_mem_mb']:.0f} | {mfu} |"
        )
    lines += ["", "## Notes", "", *report.get("notes", []), ""]
    return "\n".join(lines)


def parse(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run, < 2 min")
    p.add_argument("--smallest", action="store_true", help="tiny model only (for tests), seconds")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--compile", action="store_true", help="torch.compile each decoder layer")
    p.add_argument("--attn", default="sdpa", help="attention implementation (sdpa, eager, flex_attention)")
    p.add_argument("--chunk-size", type=int, default=256, help="tokens per chunk of the LM-head math")
    p.add_argument("--steps", type=int, default=3, help="measured optimizer steps per case")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--big-batch", type=int, default=1)
    p.add_argument("--big-seq", type=int, default=2048)
    p.add_argument("--small-batch", type=int, default=2)
    p.add_argument("--small-seq", type=int, default=128)
    p.add_argument("--objective-model", default="smollm2-135m", help="size for objective/packing/TRL cases")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--no-trl", action="store_true", help="skip TRL (it is the `bench` extra)")
    p.add_argument("--in-process", action="store_true", help="no subprocess per case (peaks then overlap)")
    p.add_argument("--peak-flops", type=float, default=None, help="peak FLOP/s for MFU (else by GPU name)")
    p.add_argument("--case-timeout", type=int, default=900)
    p.add_argument("--out", default=str(REPO / "docs" / "benchmarks.json"))
    p.add_argument("--doc", default=None, help="also write the Markdown report here (docs/benchmarks.md)")
    p.add_argument("--note", action="append", default=[], help="a line for the report's notes")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--data-case", type=int, default=0, metavar="TOKENS", help="only the data case, this many tokens"
    )
    p.add_argument("--data-num-proc", type=int, default=2, help="tokenising processes of the data case")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.big_seq = 1, 1, min(args.big_seq, 512)
    if args.smallest:
        args.steps, args.warmup, args.big_seq = 1, 1, 64
    return args


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.data_case:
        return run_data_case(args)
    if args.case:
        print(json.dumps(run_case(json.loads(args.case), args)))
        return None
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmark: --device cuda but no CUDA device is visible")
    results = []
    all_sizes = sizes(args)
    for case in plan(args):
        started = time.perf_counter()
        outcome = run_case(case, args) if args.in_process else run_isolated(case, args, argv)
        spec = all_sizes[case["size"]]
        for variant, result in zip(case["variants"], outcome, strict=True):
            flat = {"group": case["group"], "size": case["size"], **variant}
            results.append({"case": flat, "batch": spec["batch"], "seq": spec["seq"], "result": result})
            shown = result.get("error") or (
                f"step {result['step_s']:.2f}s, {result['tokens_per_s']:.0f} tok/s, "
                f"peak {result['peak_mem_mb']:.0f} MB"
            )
            print(f"[{time.perf_counter() - started:6.1f}s] {flat}: {shown}", flush=True)
    values = ratios(results, args)
    report = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python scripts/benchmark.py " + " ".join(argv),
        "environment": {
            "device": torch.cuda.get_device_name()
            if args.device == "cuda"
            else platform.processor() or "cpu",
            "cpu_count": os.cpu_count(),
            "threads": args.threads or torch.get_num_threads(),
            "dtype": args.dtype,
            "compile": args.compile,
            "torch": torch.__version__,
            "chunk_size": args.chunk_size,
            "attn": args.attn,
        },
        "ratios": {k: round(v, 4) for k, v in values.items()},
        "targets": verdicts(values),
        "results": results,
        "notes": args.note,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    if args.doc:
        Path(args.doc).parent.mkdir(parents=True, exist_ok=True)
        Path(args.doc).write_text(markdown(report))
    for key, v in report["targets"].items():
        print(f"{'MET ' if v['met'] else 'MISS'} {key}: {v['value']} (goal {v['target']})")
    return report


if __name__ == "__main__":
    main()
