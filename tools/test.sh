#!/usr/bin/env bash
# Set up everything the tests need, then run them all: core, benchmarks' pieces, the real ComfyUI and Forge.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
bash tools/ensure_chromium.sh                        # headless browser for the frontend tests
.venv/bin/python tools/comfyui_env.py >/dev/null     # offline ComfyUI 0.3.75 + tiny checkpoint (cached)
.venv/bin/python tools/forge_env.py >/dev/null       # offline Forge dfdcbab6 + random SD1.5 checkpoint (cached)
export CPSAMPLE_REQUIRE_COMFYUI=1                    # a missing ComfyUI fails instead of skipping
export CPSAMPLE_REQUIRE_FORGE=1                      # a missing Forge fails instead of skipping
exec .venv/bin/python -m pytest "$@"
