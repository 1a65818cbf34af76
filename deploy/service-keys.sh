#!/bin/sh
# Give each Shunter service a key scoped to its role, once: worker.key and router.key in $1
# (default /keys). Workers may register, heartbeat and watch; routers may watch and call
# workers; neither holds the admin key. Runs with $SHUNTER_ADMIN_KEY and $SHUNTER_REGISTRY.
set -eu
dir=${1:-/keys}
umask 077
for role in worker router; do
  [ -s "$dir/$role.key" ] && continue
  shunter keys create --tenant "shunter-${role}s" --role "$role" --json \
    | python -c "import json, sys; print(json.load(sys.stdin)['secret'])" > "$dir/$role.key.new"
  mv "$dir/$role.key.new" "$dir/$role.key"
  echo "created the $role key in $dir/$role.key"
done
