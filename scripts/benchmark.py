"""Side-by-side speed and memory of psft-lightning's training step, in one run, on the same data.

Cases (each in a fresh subprocess, so each peak memory is its own):
- gemm:      this machine's matmul rate (fp32 and bf16, two sizes): the peak MFU is measured against;
- head:      naive full-logits CE vs our chunked CE on a 152k-vocabulary Llama at length 2048;
- objective: CE vs PSFT (snapshot old policy, a non-refresh step) vs KL on SmolLM2-135M, and the floor
             parts timed alone (pi_old's no-grad log-prob forward, the reference's), in ``--rounds``
             rounds: each floor ratio is reported as its median over rounds and its range; with
             ``--dtype bf16`` also today's fp32 CE and PSFT steps (for-loop AdamW, one round) side by side;
- packing:   padded vs packed micro-batches of a variable-length mix;
- vocab:     the built-in chunked KL vs the same KL written as a plugin's vocabulary function
             (``Needs(vocab_fn=...)``, evaluated by ``ops.chunked_vocab_values``) on the 152k vocabulary;
- compile:   our CE with ``torch.compile``d decoder layers, against ``alone`` (the same step eager);
- trl:       TRL's SFTTrainer on the same model, data, batch, length and precision as our CE (``alone``),
             both with activation checkpointing and both without, a process each in ``--rounds``
             alternating rounds (their tokens/s ratio: median over rounds and range);
- data:      (``--data-case TOKENS``, run alone) tokenisation: today's loop vs the Arrow cache.

It writes one JSON (ratios and pass/fail per target) and a Markdown report. Timing is wall-clock
per optimizer step after warm-up; tokens/s counts real (non-padding) input tokens. Memory is the
peak RSS of the process during the measured steps (CPU) or ``torch.cuda.max_memory_allocated``.

    python scripts/benchmark.py --dtype bf16    # the record CPU run (<= 25 min on 2 idle cores)
    python scripts/benchmark.py --quick         # smoke run (a few minutes; tiny models, see QUICK_UNCHECKED)
    python scripts/benchmark.py --device cuda --dtype bf16   # scripts/gpu_benchmark.sh, <= 8 min
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
GEMM_SIZES = {"cpu": (2048, 4096), "cuda": (4096, 8192)}
TARGETS = {
    "head_memory": ("peak memory, ours / naive CE (152k vocab)", "<=", 0.40),
    "head_speed": ("tokens/s, ours / naive CE (152k vocab)", ">=", 0.95),
    "psft_vs_floor": ("step time, PSFT / (CE step + pi_old log-prob forward alone)", "<=", 1.03),
    "kl_vs_floor": ("step time, KL / (CE step + reference forward alone)", "<=", 1.03),
    "bf16_vs_fp32": ("default (PSFT) step: today's fp32 step time / bf16-mixed step time", ">=", 2.5),
    "bf16_mfu": ("MFU of the bf16-mixed PSFT step against the measured bf16 GEMM peak", ">=", 0.50),
    "packed_vs_padded": ("tokens/s, packed / padded", ">=", 1.5),
    "ours_vs_trl_speed": ("tokens/s, our CE / TRL SFTTrainer", ">=", 1.2),
    "ours_vs_trl_memory": ("peak memory, our CE / TRL SFTTrainer", "<=", 1.0),
    "vocab_memory": ("peak memory, KL as a vocabulary function / built-in KL (152k vocab)", "<=", 1.0),
}
INFO = {
    "psft_vs_ce": "step time, PSFT / CE",
    "kl_vs_ce": "step time, KL / CE",
    "compile_speedup": "step time, our CE eager / with compiled decoder layers",
    "compile_s": "seconds, first compiled step minus a compiled step (compile time)",
    "ce_mfu": "MFU of the CE step against the GEMM peak of its dtype",
}
# cases whose variants share a process and compare their peak memory: there memory kept by one variant
# (psft's allocator setting, allocator.keep_freed_memory) would count as the next one's, so these cases run
# with glibc's defaults; the rest run as ``psft`` does (TRL's case too, so the comparison is of the steps)
SYSTEM_MALLOC_GROUPS = ("head", "vocab")
# what --quick cannot check: it runs these cases on the tiny model, whose steps are overhead, not GEMMs
QUICK_UNCHECKED = {
    "psft_vs_floor": "tiny model: fixed per-step overhead, not the forward, sets the ratio",
    "kl_vs_floor": "tiny model: fixed per-step overhead, not the forward, sets the ratio",
    "bf16_vs_fp32": "tiny model: too small for the bf16 GEMMs to matter",
    "bf16_mfu": "tiny model: too small for MFU to mean anything",
    "packed_vs_padded": "tiny model: too small for padding to cost time",
    "ours_vs_trl_speed": "tiny model, 1 step: framework overhead, not the step",
    "ours_vs_trl_memory": "tiny model: the runtimes' own memory, not the step's",
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
        "llama-0.5b": {  # GPU MFU size: Qwen2-0.5B's shape as a Llama config (no qkv bias), random weights
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
            "batch": args.gpu_batch,
            "seq": args.big_seq,
        },
        "gemm": {"model": None, "batch": 0, "seq": 0},
    }
    return out


def plan(args) -> list[dict]:
    """The cases of this run. A case runs in one process; its variants are timed round-robin.
    The head variants get a process each, since their peak memories are compared."""
    if args.smallest:
        head, objective = "tiny", "tiny"
    elif args.quick:
        head, objective = "llama-152k", "tiny"
    else:
        head, objective = "llama-152k", args.objective_model

    def case(group: str, size: str, *variants: dict, **settings) -> dict:
        return {"group": group, "size": size, "variants": list(variants), **settings}

    def ours(objective: str, variant: str = "ours", **extra) -> dict:
        return {"variant": variant, "objective": objective, "dtype": args.dtype, **extra}

    gemm = [
        {"variant": "gemm", "objective": "-", "dtype": dtype, "n": n}
        for dtype in ("fp32", "bf16")
        for n in GEMM_SIZES[args.device][: 1 if args.smallest else None]
    ]
    # today's step, for the bf16 goal: fp32, the for-loop AdamW torch picks on CPU, no compile
    today = (
        [ours(o, dtype="fp32", optimizer="for-loop") for o in ("ce", "psft")] if args.dtype == "bf16" else []
    )
    cases = [
        case("gemm", "gemm", *gemm),
        case("head", head, ours("ce", "naive")),
        case("head", head, ours("ce")),
        case(
            "objective",
            objective,
            ours("ce"),
            ours("psft"),
            ours("kl"),
            ours("psft", "forward"),
            ours("kl", "forward"),
            *today,
        ),
        case("packing", objective, ours("ce", "padded"), ours("ce", "packed")),
        case("vocab", head, ours("kl")),
        case("vocab", head, ours("kl", "vocab")),
    ]
    if args.no_trl:
        cases.append(case("alone", objective, ours("ce"), checkpointing=False))
    for checkpointing in () if args.no_trl else (False, True):
        for round_ in range(args.rounds):  # processes alternate, so a change in load hits both alike
            cases.append(case("alone", objective, ours("ce"), checkpointing=checkpointing, round=round_))
            cases.append(case("trl", objective, ours("ce", "trl"), checkpointing=checkpointing, round=round_))
    if not (args.quick or args.smallest):
        cases.append(case("compile", objective, ours("ce", "compiled"), compile=True))
    return [c for c in cases if not args.only or c["group"] in args.only.split(",")]


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


def forward_flops_per_token(model, seq: int) -> float:
    """2 x parameters (the input embedding is a lookup: excluded; the LM head included, once if tied)
    + causal attention, 2 x layers x hidden x ``seq`` (QK and AV over half the positions on average)."""
    config = model.config
    n = sum(p.numel() for p in model.parameters())
    if not getattr(config, "tie_word_embeddings", False):
        n -= model.get_input_embeddings().weight.numel()
    return 2 * n + 2 * config.num_hidden_layers * config.hidden_size * seq


def step_forwards(variant: dict) -> int:
    """Model forwards' worth of FLOPs a variant's step does: forward + backward (2 forwards' worth)
    = 3; PSFT's pi_old and KL's reference add one no-grad forward; a forward timed alone is 1."""
    if variant["variant"] == "forward":
        return 1
    return 4 if variant["objective"] in ("psft", "kl") else 3


def run_gemm(case: dict, args) -> list[dict]:
    """This device's matmul rate per dtype and size: best of a few ``n x n @ n x n`` products."""
    results = []
    for variant in case["variants"]:
        n, dtype = variant["n"], {"fp32": torch.float32, "bf16": torch.bfloat16}[variant["dtype"]]
        a, b = (torch.randn(n, n, device=args.device).to(dtype) for _ in range(2))
        times, repeats = [], 20 if args.device == "cuda" else 1  # a GPU product is too short to time alone
        for _ in range(1 + (2 if args.smallest else 5)):
            sync(args.device)
            start = time.perf_counter()
            for _ in range(repeats):
                a @ b
            sync(args.device)
            times.append((time.perf_counter() - start) / repeats)
        best = min(times[1:])
        results.append({"step_s": best, "flops": 2 * n**3, "flops_per_s": 2 * n**3 / best})
    return results


def gemm_peaks(results: list[dict], override: float | None) -> dict[str, float]:
    """The measured peak FLOP/s per dtype (the faster size), or ``--peak-flops`` for every dtype."""
    peaks: dict[str, float] = {}
    for r in results:
        if r["case"]["group"] == "gemm" and "error" not in r["result"]:
            dtype = r["case"]["dtype"]
            peaks[dtype] = override or max(peaks.get(dtype, 0.0), r["result"]["flops_per_s"])
    return peaks


# ------------------------------------------------------------------------------------- one case
def build_module(case: dict, spec: dict, args):
    """One policy for all variants of a case, the reference the KL needs, and pi_old as the module
    holds it (snapshot, refreshed at step 0, so step 1 is a non-refresh step), per dtype: under
    ``--dtype bf16`` the frozen twins keep their Linears in bf16 as a bf16-mixed run's do, and today's
    fp32 variants get a pi_old of their own in fp32."""
    from psft_lightning.module import PSFTModule
    from psft_lightning.policies.twins import store_linears

    objectives = {v["objective"] for v in case["variants"]}
    module = PSFTModule(
        model=spec["model"],
        objective="kl" if "kl" in objectives else "ce",
        tiny_config=spec.get("tiny_config"),
        chunk_size=args.chunk_size,
        attn_implementation=args.attn,
        gradient_checkpointing=case.get("checkpointing", False),
        compile=case.get("compile", args.compile),
    )
    module.configure_model()
    module.policy.to(args.device)
    twin_dtype = torch.bfloat16 if args.dtype == "bf16" else None
    if module.reference is not None:
        module.reference.to(args.device)
        with torch.no_grad():  # a reference that differs, so the KL and its gradient are not trivial
            for p in module.reference.parameters():
                p.mul_(1.01)
        if twin_dtype is not None:
            store_linears(module.reference, twin_dtype)
    olds = {}
    for dtype in {v["dtype"] for v in case["variants"]} if objectives & {"psft", "kl"} else ():
        module.twin_dtype = twin_dtype if dtype == args.dtype else None
        olds[dtype] = module.make_old_policy("snapshot")
        olds[dtype].refresh(0, lambda: ())
    return module, olds


def vocab_reverse_kl(logits, ref_logits, targets):
    """KL(pi || pi_ref) per token as a plugin author writes it: plain PyTorch on one chunk's logits."""
    logp = torch.log_softmax(logits, -1)
    return (logp.exp() * (logp - torch.log_softmax(ref_logits, -1))).sum(-1)


def naive_stats(module, batch):
    """The full-logits path: ``[tokens, vocab]`` logits, fp32 log-softmax, gather."""
    from psft_lightning.data.batch import Batch
    from psft_lightning.ops import naive_token_stats

    batch = Batch.of(batch)
    logits = module.policy(**batch.model_inputs(), use_cache=False).logits[:, :-1][batch.loss_mask]
    return naive_token_stats(logits, batch.loss_targets)


def run_ours(case: dict, spec: dict, args) -> list[dict]:
    """Time the case's variants round-robin, one optimizer step each in turn, so that a change in
    machine load hits all of them alike; memory is each variant's peak during its own steps. The floor
    cases repeat for ``--rounds`` rounds of ``--steps`` steps each; every round's median step is kept,
    so each ratio can be computed per round and its spread reported."""
    from psft_lightning.data.collate import collate, collate_packed
    from psft_lightning.schedule import adamw

    variants = case["variants"]
    module, olds = build_module(case, spec, args)
    vocab = module.policy.config.vocab_size
    examples = make_examples(example_lengths(case["group"], spec["batch"], spec["seq"]), vocab)
    hp = module.hparams
    optimizers = {}

    def optimizer(implementation: str):  # AdamW state per implementation, made on first use
        if implementation not in optimizers:
            optimizers[implementation] = adamw(module.policy, 1e-5, 0.0, (0.9, 0.999), 1e-8, implementation)
        return optimizers[implementation]

    def make_step(variant: dict):
        packed = variant["variant"] == "packed"
        batch = collate_packed(examples, PAD, spec["seq"]) if packed else collate(examples, PAD)
        batch = {k: v.to(args.device) for k, v in batch.items()}
        forward = variant_step(module, olds.get(variant["dtype"]), variant, batch)
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[variant["dtype"]]
        autocast = torch.autocast(args.device, dtype=dtype) if dtype != torch.float32 else nullcontext()
        adam = None if variant["variant"] == "forward" else optimizer(variant.get("optimizer", hp.adamw))

        def step():
            with autocast, torch.set_grad_enabled(adam is not None):
                loss = forward()
            if adam is not None:
                loss.backward()
                adam.step()
                adam.zero_grad(set_to_none=True)

        return step, batch

    steps = [make_step(v) for v in variants]
    first = []
    for step, _ in steps:
        sync(args.device)
        start = time.perf_counter()
        step()
        sync(args.device)
        first.append(time.perf_counter() - start)
        for _ in range(args.warmup - 1):
            step()
    times: list[list[float]] = [[] for _ in variants]
    by_round: list[list[float]] = [[] for _ in variants]  # a repeated variant's median step per round
    peaks = [0] * len(variants)
    repeated = [repeats(case, v, args) for v in variants]
    rounds = args.rounds if any(repeated) else 1
    for round_ in range(rounds):
        timed = [i for i in range(len(variants)) if round_ == 0 or repeated[i]]
        start_of_round = [len(times[i]) for i in range(len(variants))]
        for _ in range(args.steps):
            for i in timed:
                with PeakMemory(args.device) as memory:
                    sync(args.device)
                    start = time.perf_counter()
                    steps[i][0]()
                    sync(args.device)
                    times[i].append(time.perf_counter() - start)
                peaks[i] = max(peaks[i], memory.peak)
        for i in timed:
            if repeated[i]:
                by_round[i].append(median(times[i][start_of_round[i] :]))
        print(f"  {case['group']}: round {round_ + 1}/{rounds}", file=sys.stderr, flush=True)
    flops = forward_flops_per_token(module.policy, spec["seq"])
    results = []
    for variant, (step, batch), t, peak, t0, r in zip(
        variants, steps, times, peaks, first, by_round, strict=True
    ):
        result = summary(t, int(batch["num_input_tokens"]), peak, batch["input_ids"].numel())
        result["first_step_s"] = t0
        if r:
            result["round_s"] = r
        result["flops_per_token"] = flops * step_forwards(variant)
        if args.profile and case["group"] == "objective" and variant == profiled(variants, args):
            result["profile"] = profile(step, args.device)
        results.append(result)
    return results


def repeats(case: dict, variant: dict, args) -> bool:
    """Whether a variant is timed in every round: the floor cases (the objective group's steps and
    forwards in the run's dtype), whose ratios are reported with their spread over rounds."""
    return case["group"] == "objective" and variant["dtype"] == args.dtype


def median(values: list[float]) -> float:
    """The middle value (the upper one of an even count), as the step time is taken everywhere here."""
    return sorted(values)[len(values) // 2]


def variant_step(module, old, variant: dict, batch: dict):
    """The variant's forward as a function returning the loss (None for a forward timed alone): the
    module's own training micro-batch at step 1 (pi_old refreshed at 0), or the naive / plugin heads."""
    from psft_lightning.data.batch import Batch
    from psft_lightning.objectives import Needs, ObjectiveInputs, build_objective
    from psft_lightning.step import train_micro_batch

    kind = variant["variant"]
    objective = build_objective(variant["objective"])
    if kind == "forward":  # pi_old's log-prob forward as the step runs it, or the reference's through it
        if variant["objective"] == "psft":
            return lambda: old.logprobs(batch, 1)
        return lambda: old.logprobs_fn(module.reference, batch)
    if kind not in ("naive", "vocab"):
        policy, reference, chunk = module.policy, module.reference_model(), module.chunk_size
        return lambda: train_micro_batch(objective, policy, reference, old, batch, 1, 1, 0, chunk).output.loss
    n_loss = float(Batch.of(batch).num_loss_tokens)
    needs = Needs(vocab_fn=vocab_reverse_kl, vocab_ref=True) if kind == "vocab" else objective.needs()

    def forward():
        if kind == "naive":
            stats = naive_stats(module, batch)
        else:
            stats = module.token_stats(module.policy, batch, module.reference, needs)
        inputs = ObjectiveInputs(
            stats.logprobs,
            torch.ones_like(stats.logprobs, dtype=torch.bool),
            num_tokens=n_loss,
            ref_kl=stats.vocab if kind == "vocab" else stats.ref_kl,
        )
        return objective(inputs).loss

    return forward


def profiled(variants: list[dict], args) -> dict:
    """The variant the profile is of: the default config's step (PSFT) in this run's dtype."""
    return next(v for v in variants if v["objective"] == "psft" and v["dtype"] == args.dtype)


def profile(step, device: str) -> list[dict]:
    """One step under torch.profiler: the top ops by self CPU time (CUDA: by self device time)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cuda = device == "cuda"
    with torch_profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        step()
        sync(device)
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, sort), reverse=True)
    total = sum(getattr(e, sort) for e in events) or 1.0
    return [
        {"op": e.key, "self_s": getattr(e, sort) / 1e6, "share": getattr(e, sort) / total, "calls": e.count}
        for e in events[:12]
    ]


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
        bf16=case["variants"][0]["dtype"] == "bf16",
        gradient_checkpointing=case["checkpointing"],
        gradient_checkpointing_kwargs={"use_reentrant": False},  # as ours
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
    step = median(times)
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
    """One result per variant of ``case``, with the host allocator as ``psft`` sets it, except where
    variants sharing the process compare peak memory (``SYSTEM_MALLOC_GROUPS``)."""
    from psft_lightning.allocator import keep_freed_memory

    if case["group"] not in SYSTEM_MALLOC_GROUPS:
        keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = sizes(args)[case["size"]]
    if case["group"] == "gemm":
        return run_gemm(case, args)
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


def add_mfu(results: list[dict], peaks: dict[str, float]) -> None:
    """MFU of each step against the measured GEMM peak of its dtype: model FLOPs per token (see
    ``forward_flops_per_token`` and ``step_forwards``) x real tokens/s / peak FLOP/s."""
    for r in results:
        res, dtype = r["result"], r["case"].get("dtype")
        if "flops_per_token" in res and dtype in peaks:
            res["mfu"] = res["flops_per_token"] * res["tokens_per_s"] / peaks[dtype]


def ratios(results: list[dict], args) -> tuple[dict[str, float], dict[str, float]]:
    """The targets' ratios and the info rows; each is measured within one size, side by side."""
    out, info = {}, {}
    naive, ours = find(results, group="head", variant="naive"), find(results, group="head", variant="ours")
    if naive and ours:
        out["head_memory"] = ours["peak_mem_mb"] / naive["peak_mem_mb"]
        out["head_speed"] = ours["tokens_per_s"] / naive["tokens_per_s"]
    at = {"group": "objective", "dtype": args.dtype}
    ce = find(results, variant="ours", objective="ce", **at)
    for name in ("psft", "kl"):
        step = find(results, variant="ours", objective=name, **at)
        alone = find(results, variant="forward", objective=name, **at)
        if ce and step:
            info[f"{name}_vs_ce"] = step["step_s"] / ce["step_s"]
        if ce and step and alone:
            out[f"{name}_vs_floor"] = step["step_s"] / (ce["step_s"] + alone["step_s"])
    today = find(results, group="objective", objective="psft", dtype="fp32", optimizer="for-loop")
    bf16 = find(results, variant="ours", objective="psft", **at) if args.dtype == "bf16" else None
    if today and bf16:
        out["bf16_vs_fp32"] = today["step_s"] / bf16["step_s"]
    if bf16 and "mfu" in bf16:
        out["bf16_mfu"] = bf16["mfu"]
    if ce and "mfu" in ce:
        info["ce_mfu"] = ce["mfu"]
    builtin = find(results, group="vocab", variant="ours")
    vocab = find(results, group="vocab", variant="vocab")
    if builtin and vocab:
        out["vocab_memory"] = vocab["peak_mem_mb"] / builtin["peak_mem_mb"]
    padded = find(results, group="packing", variant="padded")
    packed = find(results, group="packing", variant="packed")
    if padded and packed:
        out["packed_vs_padded"] = packed["tokens_per_s"] / padded["tokens_per_s"]
    eager, compiled = find(results, group="alone", checkpointing=False), find(results, group="compile")
    if eager and compiled:
        info["compile_speedup"] = eager["step_s"] / compiled["step_s"]
        info["compile_s"] = compiled["first_step_s"] - compiled["step_s"]
    for checkpointing in (False, True):
        trl = find(results, group="trl", checkpointing=checkpointing)
        mine = find(results, group="alone", checkpointing=checkpointing)
        if trl and mine:
            setting = f"[checkpointing {'on' if checkpointing else 'off'}]"
            out[f"ours_vs_trl_speed{setting}"] = mine["tokens_per_s"] / trl["tokens_per_s"]
            out[f"ours_vs_trl_memory{setting}"] = mine["peak_mem_mb"] / trl["peak_mem_mb"]
    for key, values in per_round(results, args).items():  # a repeated ratio: its median over rounds
        (out if key.split("[")[0] in TARGETS else info)[key] = median(values)
    return out, info


def per_round(results: list[dict], args) -> dict[str, list[float]]:
    """The repeated ratios computed within each round, from the variants' median steps of that round,
    so that their range is the spread of the ratio itself (not of the step times it is made of): the
    floor ratios, and ours vs TRL's tokens/s (a process each per round)."""
    out: dict[str, list[float]] = {}
    for checkpointing in (False, True):
        trl = find(results, group="trl", checkpointing=checkpointing)
        mine = find(results, group="alone", checkpointing=checkpointing)
        if trl and mine and "round_s" in trl and "round_s" in mine:
            rounds = zip(mine["round_s"], trl["round_s"], strict=True)
            setting = f"[checkpointing {'on' if checkpointing else 'off'}]"
            speed = [mine["tokens"] / m / (trl["tokens"] / t) for m, t in rounds]
            out[f"ours_vs_trl_speed{setting}"] = speed
    at = {"group": "objective", "dtype": args.dtype}
    ce = find(results, variant="ours", objective="ce", **at)
    if ce is None or "round_s" not in ce:
        return out
    for name in ("psft", "kl"):
        step = find(results, variant="ours", objective=name, **at)
        alone = find(results, variant="forward", objective=name, **at)
        if step:
            out[f"{name}_vs_ce"] = [s / c for s, c in zip(step["round_s"], ce["round_s"], strict=True)]
        if step and alone:
            rounds = zip(step["round_s"], ce["round_s"], alone["round_s"], strict=True)
            out[f"{name}_vs_floor"] = [s / (c + a) for s, c, a in rounds]
    psft = find(results, variant="ours", objective="psft", **at)
    if args.dtype == "bf16" and psft and "mfu" in psft:  # MFU scales as 1 / step time
        out["bf16_mfu"] = [psft["mfu"] * psft["step_s"] / s for s in psft["round_s"]]
    return out


def merge_rounds(results: list[dict]) -> list[dict]:
    """One result per case from a case run once per round (``round`` in its settings): every step
    time, each round's median step (``round_s``), the median of those as its step time, and the
    highest peak memory and first step of any round."""
    merged: list[dict] = []
    for r in results:
        if "round" not in r["case"]:
            merged.append(r)
            continue
        case = {k: v for k, v in r["case"].items() if k != "round"}
        res = r["result"]
        same = next((m for m in merged if m["case"] == case), None)
        if same is None:
            merged.append(same := {**r, "case": case, "result": {**res, "round_s": [], "step_times_s": []}})
        kept = same["result"]
        if "error" in res or "error" in kept:
            kept.setdefault("error", res.get("error"))
            continue
        kept["round_s"].append(res["step_s"])
        kept["step_times_s"] += res["step_times_s"]
        kept["step_s"] = median(kept["round_s"])
        kept["tokens_per_s"] = kept["tokens"] / kept["step_s"]
        kept["peak_mem_mb"] = max(kept["peak_mem_mb"], res["peak_mem_mb"])
        if "first_step_s" in res:
            kept["first_step_s"] = max(kept["first_step_s"], res["first_step_s"])
    return merged


def spreads(results: list[dict], args) -> dict[str, dict]:
    """Median and range (min-max) over rounds of each floor ratio, with the per-round values."""
    return {
        key: {
            "median": round(median(v), 4),
            "min": round(min(v), 4),
            "max": round(max(v), 4),
            "rounds": [round(x, 4) for x in v],
        }
        for key, v in per_round(results, args).items()
    }


def verdicts(values: dict[str, float], quick: bool) -> tuple[dict[str, dict], dict[str, dict]]:
    """Met or not per target; under ``--quick`` the targets it cannot check are set apart, with why."""
    out, unchecked = {}, {}
    for key, value in values.items():
        base = key.split("[")[0]
        what, op, bound = TARGETS[base]
        row = {"what": what, "value": round(value, 3), "target": f"{op} {bound}"}
        if quick and base in QUICK_UNCHECKED:
            unchecked[key] = {**row, "why": QUICK_UNCHECKED[base]}
            continue
        out[key] = {**row, "met": value <= bound if op == "<=" else value >= bound}
    return out, unchecked


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        "# Benchmarks",
        "",
        "The sections down to Notes are written by `scripts/benchmark.py` from one run on the same",
        "synthetic token data (sections after them record other runs): cases ran one after another,",
        "each in a fresh process; the variants of one case (CE/PSFT/KL, padded/packed) share its",
        "process and are timed round-robin. Step time is the median wall-clock optimizer step after",
        "warm-up; tokens/s counts real input tokens (no padding); memory is the peak RSS of the process",
        "during the measured steps (CPU) or `torch.cuda.max_memory_allocated` (CUDA).",
        "",
        "MFU = model FLOPs per token x tokens/s / the GEMM peak of the step's dtype measured in this run",
        "(`gemm` rows). A forward is 2 x N + 2 x L x H x S FLOPs per token (N: parameters without the",
        "input embedding, the LM head counted once; L layers, hidden size H, S the case's max length:",
        "causal attention); a training step is 3 forwards (forward + backward), a PSFT or KL step 4",
        "(the no-grad pi_old or reference forward), a forward timed alone 1.",
        "",
        f"- date: {report['date']}",
        f"- device: {env['device']} ({env['cpu_count']} CPU cores, {env['threads']} torch threads)",
        f"- dtype: {env['dtype']}, torch.compile: {env['compile']}, torch {env['torch']}",
        "- host memory: freed memory kept for reuse as `psft` does (`allocator.keep_freed_memory`),",
        f"  except in the {' and '.join(SYSTEM_MALLOC_GROUPS)} cases (glibc's defaults: memory compared)",
        f"- command: `{report['command']}`",
        "",
        "## GEMM peak",
        "",
        "| dtype | n x n @ n x n | seconds | GFLOP/s |",
        "|---|---|---|---|",
    ]
    for r in report["results"]:
        if r["case"]["group"] == "gemm" and "error" not in r["result"]:
            c, res = r["case"], r["result"]
            lines.append(
                f"| {c['dtype']} | {c['n']} | {res['step_s']:.4f} | {res['flops_per_s'] / 1e9:,.0f} |"
            )
    spread = report.get("spread", {})

    def span(key: str) -> str:
        s = spread.get(key)
        return f"{s['min']:.3f}-{s['max']:.3f} ({len(s['rounds'])})" if s else "-"

    lines += [
        "",
        "## Targets",
        "",
        "A ratio with a range is the median over rounds of the ratio computed within each round; the",
        "range is its min-max over the rounds (their number in brackets).",
        "",
        "| target | value | range (rounds) | goal | met |",
        "|---|---|---|---|---|",
    ]
    for key, v in report["targets"].items():
        met = "yes" if v["met"] else "NO"
        lines.append(f"| {v['what']} `{key}` | {v['value']} | {span(key)} | {v['target']} | {met} |")
    for key, v in report.get("unchecked", {}).items():
        why = f"not checked: {v['why']}"
        lines.append(f"| {v['what']} `{key}` | {v['value']} | {span(key)} | {v['target']} | {why} |")
    lines += ["", "| info | value | range (rounds) |", "|---|---|---|"]
    lines += [
        f"| {INFO[key]} `{key}` | {value:.3f} | {span(key)} |"
        for key, value in report.get("info", {}).items()
    ]
    lines += [
        "",
        "## Cases",
        "",
        "| group | model | variant | objective | dtype | examples x max len | step s | first step s "
        "| tokens/s | peak MB | MFU |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        c, res = r["case"], r["result"]
        if c["group"] == "gemm":
            continue
        shape = f"{len(example_lengths(c['group'], r['batch'], r['seq']))} x {r['seq']}"
        variant = c["variant"] + (" (ckpt)" if c.get("checkpointing") else "")
        variant += f" ({c['optimizer']} AdamW)" if "optimizer" in c else ""
        head = (
            f"| {c['group']} | {c['size']} | {variant} | {c['objective']} | {c.get('dtype', '-')} | {shape} "
        )
        if "error" in res:
            lines.append(f"{head}| error: {res['error'][:80]} | | | | |")
            continue
        mfu = f"{100 * res['mfu']:.1f}%" if "mfu" in res else "-"
        first = f"{res['first_step_s']:.2f}" if "first_step_s" in res else "-"
        lines.append(
            f"{head}| {res['step_s']:.2f} | {first} | {res['tokens_per_s']:.0f} "
            f"| {res['peak_mem_mb']:.0f} | {mfu} |"
        )
    profiles = [r for r in report["results"] if "profile" in r["result"]]
    for r in profiles:
        c = r["case"]
        lines += [
            "",
            f"## Profile: one {c['objective']} step, {c['dtype']}, {c['size']} (top ops by self time)",
            "",
            "| op | self s | share | calls |",
            "|---|---|---|---|",
        ]
        for op in r["result"]["profile"]:
            lines.append(f"| `{op['op']}` | {op['self_s']:.3f} | {100 * op['share']:.1f}% | {op['calls']} |")
    lines += ["", "## Notes", "", *report.get("notes", []), ""]
    return "\n".join(lines)


def parse(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run, a few minutes (tiny objective model)")
    p.add_argument("--smallest", action="store_true", help="tiny model only (for tests), seconds")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--compile", action="store_true", help="torch.compile each decoder layer")
    p.add_argument("--attn", default="sdpa", help="attention implementation (sdpa, eager, flex_attention)")
    p.add_argument("--chunk-size", type=int, default=None, help="LM-head chunk tokens (CPU 256, CUDA 2048)")
    p.add_argument("--steps", type=int, default=None, help="measured steps per variant (CPU 3, CUDA 10)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps per variant (CPU 1, CUDA 3)")
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds for the floor cases and the TRL comparison (median, range)",
    )
    p.add_argument("--big-batch", type=int, default=1)
    p.add_argument("--big-seq", type=int, default=2048)
    p.add_argument("--small-batch", type=int, default=8, help="examples per step (the default config's 8)")
    p.add_argument("--small-seq", type=int, default=128)
    p.add_argument("--gpu-batch", type=int, default=4, help="examples per step of the llama-0.5b size")
    p.add_argument(
        "--objective-model",
        default=None,
        help="size of objective/packing/TRL (smollm2-135m; CUDA llama-0.5b)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--no-trl", action="store_true", help="skip TRL (it is the `bench` extra)")
    p.add_argument("--in-process", action="store_true", help="no subprocess per case (peaks then overlap)")
    p.add_argument("--peak-flops", type=float, default=None, help="peak FLOP/s for MFU (else measured)")
    p.add_argument("--no-profile", action="store_true", help="skip the profile of one PSFT step")
    p.add_argument("--only", default="", help="only these case groups, comma-separated (gemm,objective,...)")
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
    if args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")
    cuda = args.device == "cuda"
    args.steps = args.steps or (10 if cuda else 3)
    args.warmup = args.warmup or (3 if cuda else 1)
    args.objective_model = args.objective_model or ("llama-0.5b" if cuda else "smollm2-135m")
    args.profile = not args.no_profile
    args.chunk_size = args.chunk_size or (2048 if cuda else 256)
    if args.quick:
        args.steps, args.warmup, args.big_seq = 1, 1, min(args.big_seq, 512)
    if args.smallest:
        args.steps, args.warmup, args.big_seq = 1, 1, 64
    return args


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmark: error: --device cuda, but torch sees no CUDA device on this machine")
    if args.data_case:
        return run_data_case(args)
    if args.case:
        print(json.dumps(run_case(json.loads(args.case), args)))
        return None
    results = []
    all_sizes = sizes(args)
    cases, began = plan(args), time.perf_counter()
    for number, case in enumerate(cases, 1):
        started = time.perf_counter()
        settings = {k: v for k, v in case.items() if k not in ("group", "size", "variants")}
        print(
            f"[{started - began:6.0f}s] case {number}/{len(cases)}: {case['group']} {case['size']}",
            flush=True,
        )
        outcome = run_case(case, args) if args.in_process else run_isolated(case, args, argv)
        spec = all_sizes[case["size"]]
        for variant, result in zip(case["variants"], outcome, strict=True):
            flat = {"group": case["group"], "size": case["size"], **settings, **variant}
            results.append({"case": flat, "batch": spec["batch"], "seq": spec["seq"], "result": result})
            shown = result.get("error") or (
                f"{result['step_s']:.3f}s"
                + (f", {result['tokens_per_s']:.0f} tok/s" if "tokens_per_s" in result else "")
                + (f", peak {result['peak_mem_mb']:.0f} MB" if "peak_mem_mb" in result else "")
                + (f", {result['flops_per_s'] / 1e9:.0f} GFLOP/s" if "flops_per_s" in result else "")
            )
            print(f"        +{time.perf_counter() - started:5.0f}s {flat}: {shown}", flush=True)
    results = merge_rounds(results)
    add_mfu(results, gemm_peaks(results, args.peak_flops))
    values, info = ratios(results, args)
    targets, unchecked = verdicts(values, args.quick or args.smallest)
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
        "gemm_peak_flops": gemm_peaks(results, args.peak_flops),
        "ratios": {k: round(v, 4) for k, v in values.items()},
        "targets": targets,
        "unchecked": unchecked,
        "info": {k: round(v, 4) for k, v in info.items()},
        "spread": spreads(results, args),
        "results": results,
        "notes": args.note,
    }
    out = Path(args.out)
    if out.exists() and "data" in (previous := json.loads(out.read_text())):
        report["data"] = previous["data"]  # the data case's entry (``--data-case``), recorded apart
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    if args.doc:
        Path(args.doc).parent.mkdir(parents=True, exist_ok=True)
        Path(args.doc).write_text(markdown(report))
    for key, v in report["targets"].items():
        print(f"{'MET ' if v['met'] else 'MISS'} {key}: {v['value']} (goal {v['target']})")
    for key, v in unchecked.items():
        print(f"---- {key}: {v['value']} (goal {v['target']}; not checked: {v['why']})")
    return report


if __name__ == "__main__":
    main()
