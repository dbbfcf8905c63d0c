#!/usr/bin/env bash
# The 48 labelled photos of ../shared/samples/photos as a folder-per-class tree (symlinks), so
# `ferflow evaluate --dataset` scores them through face detection like any photo tree.
#   bash scripts/samples_tree.sh [OUT]        # default artifacts/samples_tree
set -euo pipefail
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/../shared/samples/photos"
OUT="${1:-artifacts/samples_tree}"
[[ -f "$SRC/labels.csv" ]] || { echo "error: $SRC/labels.csv not found (see ../shared/README.md)" >&2; exit 2; }
rm -rf "$OUT.tmp" && mkdir -p "$OUT.tmp"
tail -n +2 "$SRC/labels.csv" | tr -d '\r' | while IFS=, read -r image emotion; do
  mkdir -p "$OUT.tmp/$emotion"
  ln -s "$(cd "$SRC" && pwd)/$image" "$OUT.tmp/$emotion/$image"
done
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
echo "$OUT: $(find "$OUT" -type l | wc -l) photos in $(ls "$OUT" | wc -l) classes"
