#!/usr/bin/env bash
# Builds wamp-cluster and runs the three-node local cluster of config/cluster/ on loopback
# until Ctrl-C; then every node leaves gracefully and the script waits for them.
#   ./scripts/local-cluster.sh
#   curl -s 127.0.0.1:8081/cluster/members
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin wamp-cluster
pids=()
stop() {
  trap - INT TERM
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait
}
trap stop INT TERM
for i in 1 2 3; do
  target/release/wamp-cluster node --config "config/cluster/node-$i.toml" &
  pids+=($!)
done
echo "three nodes running; admin APIs on 127.0.0.1:8081, :8082, :8083; WAMP clients on ws://127.0.0.1:8091/ws, :8092, :8093 (realm1); Ctrl-C leaves" >&2
wait
