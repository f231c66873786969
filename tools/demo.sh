#!/usr/bin/env bash
# Set up, then run the main job: the fine-tune demo (a small diffusion model collapses onto its
# 16 fine-tune digits; a guard stops it). Prints the table, writes demo/out/compare.png.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
exec .venv/bin/python -m benchmarks.finetune.demo "$@"
