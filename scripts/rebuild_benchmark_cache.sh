#!/usr/bin/env bash
# Rebuild benchmarks/results/cache exactly as the committed benchmark results used it.
#
# The trained-quantization, post-training, gap-width, Weightless and incremental benchmarks
# start from the seed-0 CPU checkpoints of benchmarks/prune_lenet.py (dense and pruned
# LeNet-300-100 and LeNet-5). Those were made at commit 5e9a4df, before the data-order fix of
# commit 2054fc4; today's prune_lenet.py draws other shuffles and writes other checkpoints, so
# the later benchmarks run from them give other figures than the committed ones. This script
# checks 5e9a4df out in a temporary git worktree, sets it up (make), runs its prune_lenet.py on
# the CPU (about 10 minutes on 2 cores) and copies the four checkpoints here. Needs the full
# git history (not a shallow clone) and Fashion-MNIST (make data).
#
#   scripts/rebuild_benchmark_cache.sh
set -euo pipefail
COMMIT=5e9a4df
root=$(git rev-parse --show-toplevel)
if ! git -C "$root" cat-file -e "$COMMIT^{commit}" 2>/dev/null; then
  echo "rebuild_benchmark_cache: commit $COMMIT is not in this clone (a shallow clone?);" \
    "run 'git fetch --unshallow' first" >&2
  exit 1
fi
tmp=$(mktemp -d)
cleanup() {
  git -C "$root" worktree remove --force "$tmp/tree" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
git -C "$root" worktree add --detach --quiet "$tmp/tree" "$COMMIT"
make -C "$tmp/tree" .venv/.deepzip-installed
(cd "$tmp/tree" && CUDA_VISIBLE_DEVICES= .venv/bin/python benchmarks/prune_lenet.py)
mkdir -p "$root/benchmarks/results/cache"
for name in lenet-300-100-dense lenet-300-100-pruned lenet-5-dense lenet-5-pruned; do
  # copy, then rename: a reader never sees half a checkpoint
  cp "$tmp/tree/benchmarks/results/cache/$name.safetensors" \
    "$root/benchmarks/results/cache/.$name.safetensors.tmp"
  mv "$root/benchmarks/results/cache/.$name.safetensors.tmp" \
    "$root/benchmarks/results/cache/$name.safetensors"
done
echo "rebuild_benchmark_cache: the $COMMIT checkpoints are in benchmarks/results/cache"
