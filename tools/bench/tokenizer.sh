#!/usr/bin/env bash
# Tokenization throughput, herd vs Python, on the same ~10 MB multilingual text, one after the
# other in one run (compare ratios, not absolute numbers: machines here are shared and noisy).
# PYTHON defaults to the reference venv (tools/reference/README.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-/work/refenv/bin/python}
cargo bench -p herd-text --bench tokenize
"$PYTHON" tools/bench/tokenizer_python.py
