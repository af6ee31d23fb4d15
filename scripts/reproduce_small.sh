#!/usr/bin/env bash
# Runs every experiment at the `small` preset with 3 seeds, one after the other, into runs/small/.
# The numbers in README.md and docs/results.md come from this script (see the dates there).
# Usage: scripts/reproduce_small.sh [EXPERIMENT ...]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
export RMTPRUNE_DATA="${RMTPRUNE_DATA:-$(cd .. && pwd)/shared/data}"
experiments=("$@")
if [ ${#experiments[@]} -eq 0 ]; then
    experiments=(fc-fashion fc-mnist cnn-mnist cnn-fashion fc-cifar10 init regression theory landscape)
fi
for id in "${experiments[@]}"; do
    start=$(date +%s)
    .venv/bin/rmtprune reproduce "$id" --preset small --seeds 3 --out "runs/small/$id" --quiet
    echo "$id: $(( $(date +%s) - start )) s" | tee -a runs/small/timings.txt
done
