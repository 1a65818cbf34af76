#!/bin/sh
# Register every version of the model repository at $1 (default /models) with the
# registry, the highest version of each model in production at 100 %. Idempotent enough
# for a compose "init" service: a version already registered is reported and skipped.
set -eu
repo=${1:-/models}
for config in "$repo"/*/config.yaml; do
  model_dir=$(dirname "$config")
  model=$(basename "$model_dir")
  versions=$(ls "$model_dir" | grep -E '^[0-9]+$' | sort -n)
  [ -n "$versions" ] || continue
  highest=$(echo "$versions" | tail -n 1)
  for version in $versions; do
    state=staged
    [ "$version" = "$highest" ] && state=production
    shunter models register "$model" --version "$version" --artifact "$model_dir/$version" \
      --config "$config" --state "$state" || echo "register $model/$version: skipped"
  done
  # --force: workers may still be starting; they load what is registered.
  shunter traffic set "$model" "$highest=100" --force
done
