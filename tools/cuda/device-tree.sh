#!/usr/bin/env bash
# The repository is ~63 MiB of tracked files and a run on the lent GPU machine carries at most
# 64 MiB (tree + carried binaries), so before such a run the large fixtures check.sh does not
# read (tokenizer, image references, gguf-tiny's bf16 files) leave the git index for a while:
#
#   tools/cuda/device-tree.sh trim      # untrack them (files stay on disk, ignored meanwhile)
#   … run tools/cuda/check.sh there, carrying target/cuda-bin …
#   tools/cuda/device-tree.sh restore   # track them again (the index as it was)
#
# Never commit between the two. With them gone, check.sh skips the two gguf tests that read
# them (SKIP_TRIMMED=1 is set for it by `trim`'s message).
set -euo pipefail
cd "$(dirname "$0")/../.."
large=(fixtures/tokenizer fixtures/images/reference.safetensors
    fixtures/gguf-tiny/model-bf16.gguf fixtures/gguf-tiny/model.safetensors)
exclude=.git/info/exclude
case "${1:-}" in
    trim)
        git ls-files "${large[@]}" > .git/herd-trimmed
        git rm -r --cached -q "${large[@]}"
        sed 's|^|/|' .git/herd-trimmed >> "$exclude"
        echo "untracked $(wc -l < .git/herd-trimmed) files; run check.sh with SKIP_TRIMMED=1"
        ;;
    restore)
        git reset -q -- $(cat .git/herd-trimmed)
        grep -vxF -f <(sed 's|^|/|' .git/herd-trimmed) "$exclude" > "$exclude.new" || true
        mv "$exclude.new" "$exclude"
        rm .git/herd-trimmed
        git status --short
        ;;
    *) echo "usage: $0 trim|restore" >&2; exit 2 ;;
esac
