#!/usr/bin/env bash
# Runs the OpenAI-client end-to-end suite against live `herd serve` processes on the tiny
# checkpoints in fixtures/. Makes (once) a venv with the pinned client in target/e2e-venv and
# builds the herd binary if needed. Needs python3 with venv and PyPI the first time.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=target/e2e-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import openai" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/e2e/requirements.txt
fi
cargo build --locked -p herd-cli --bin herd
HERD_BIN="${HERD_BIN:-target/debug/herd}" "$venv/bin/python" -m unittest -v tests/e2e/test_openai.py "$@"
