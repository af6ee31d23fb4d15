#!/usr/bin/env bash
# Copies the reports of finished runs (not their checkpoints) into DEST/<experiment>/,
# so the figures and tables cited in README.md and docs/results.md are in the repository.
# Usage: scripts/archive_results.sh [RUNS_DIR [DEST]]   (default runs/small docs/results)
#        scripts/archive_results.sh runs/paper docs/results/paper
set -euo pipefail
cd "$(dirname "$0")/.."
src="${1:-runs/small}"
dest_root="${2:-docs/results}"
for run in "$src"/*/; do
    id=$(basename "$run")
    [ -f "$run/report.md" ] || continue
    dest="$dest_root/$id"
    rm -rf "$dest"
    mkdir -p "$dest"
    (cd "$run" && find . -path ./seed-\* -prune -o -type f \
        \( -name '*.md' -o -name '*.png' -o -name '*.json' -o -name '*.csv' \) -print) |
        while read -r f; do
            case "$f" in */seed-*) continue ;; esac
            mkdir -p "$dest/$(dirname "$f")"
            cp "$run/$f" "$dest/$f"
        done
done
echo "archived into $dest_root/"
