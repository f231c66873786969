#!/usr/bin/env bash
# Set up .venv, then run the demo: the product's recommended path on a small digits fine-tune that
# copies its 16 training images (shipped: benchmarks/finetune/demo_model.safetensors). Trains a guard,
# calibrates it on the model's own sampler, samples fresh seeds with and without the calibrated guard;
# prints the table, writes demo/out/compare.png. Options: python -m benchmarks.finetune.demo --help.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
exec .venv/bin/python -m benchmarks.finetune.demo "$@"
