#!/usr/bin/env bash
# Fuzzes every herd-fuzz target for SECONDS each (default 120), then prints a table and one
# JSON line. Crashing inputs land in target/fuzz/crashes/TARGET/; copy the ones worth keeping
# to fuzz/regressions/TARGET/ (replayed by CI) after fixing them.
#
#   tools/fuzz/run.sh [SECONDS] [TARGET[=SECONDS]...]
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${1:-120}"
shift || true
# The dev profile: dependencies at -O3 (Cargo.toml), and overflow checks on, so an integer
# overflow in a parser is a crash here.
cargo build -p herd-fuzz >&2
bin=target/debug/herd-fuzz
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <("$bin" list | awk '{print $1}')
fi
lines=()
for spec in "${targets[@]}"; do
    t="${spec%%=*}"
    s="$seconds"
    [[ "$spec" == *=* ]] && s="${spec#*=}"
    lines+=("$("$bin" run "$t" --seconds "$s" --out target/fuzz || true)")
done
printf '%-16s %8s %14s %12s %8s\n' target seconds executions exec/s crashes
for l in "${lines[@]}"; do
    python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("%-16s %8d %14d %12.0f %8d" % (r["target"], r["seconds"], r["executions"], r["executions"]/max(r["seconds"],1), r["crashes"]))' "$l"
done
python3 -c 'import json,sys; print(json.dumps({"fuzz": [json.loads(l) for l in sys.argv[1:]]}))' "${lines[@]}"
