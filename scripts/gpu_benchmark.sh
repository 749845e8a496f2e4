#!/usr/bin/env bash
# The GPU variant of the benchmark on one CUDA device (<= 8 minutes on an H100/H200): a config-built
# Qwen2-0.5B-shaped model (random weights, nothing downloaded), bf16-mixed, MFU against the GEMM peak
# measured on the same GPU, PSFT and KL against their floors, packed vs padded, peak CUDA memory.
# Writes docs/benchmarks_gpu.json and docs/benchmarks_gpu.md; extra arguments go to the script. The
# compile case is left out to stay within 8 minutes (add it: --only gemm,...,alone,compile).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python scripts/benchmark.py --device cuda --dtype bf16 --no-trl --case-timeout 300 \
  --only gemm,head,objective,packing,vocab,alone \
  --out docs/benchmarks_gpu.json --doc docs/benchmarks_gpu.md "$@"
