#!/usr/bin/env bash
# Query latency of an earlier commit against the working tree, interleaved in one session.
#
#   bench/ab_query_latency.sh 5e501c8 [items=100000] [pairs=3]
#
# Single runs here vary by up to 25%, and drift over minutes; interleaving one run of each per
# pair keeps the two sides under the same conditions. The earlier commit runs from a git
# worktree with PYTHONPATH pointing at it (the worker it starts imports that code too) and
# shares bench/.cache, so each side builds or reuses the state its own code hashes to.
set -euo pipefail
base=${1:?usage: bench/ab_query_latency.sh COMMIT [items] [pairs]}
items=${2:-100000}
pairs=${3:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
py="$root/.venv/bin/python"
wt=$(mktemp -d)/base
git -C "$root" worktree add --detach "$wt" "$base" >/dev/null
trap 'git -C "$root" worktree remove --force "$wt"' EXIT
mkdir -p "$root/bench/.cache"
rm -rf "$wt/bench/.cache" && ln -s "$root/bench/.cache" "$wt/bench/.cache"
for i in $(seq 1 "$pairs"); do
  echo "== $base, pair $i"
  (cd "$wt" && PYTHONPATH="$wt" "$py" bench/query_latency.py --items "$items" --runs 1 --out "$(mktemp -d)/query_latency.json" | grep -E '^run')
  echo "== working tree ($(git -C "$root" rev-parse --short HEAD)), pair $i"
  (cd "$root" && "$py" bench/query_latency.py --items "$items" --runs 1 --out "$(mktemp -d)/query_latency.json" | grep -E '^run')
done
