#!/usr/bin/env bash
# A three-node Elasticsearch cluster on this machine, for trying Sluice (and
# node loss) by hand; called by `./dev cluster ...`, which installs the
# distribution first. The integration test of node loss starts its own private
# cluster the same way (tests/it/support/es_cluster.rs).
#
#   ./dev cluster up            3 nodes on 127.0.0.1:19211-19213, 256 MB heap each
#   ./dev cluster status        health and the nodes
#   ./dev cluster kill N        SIGKILL node N (1-3): like a lost machine
#   ./dev cluster start N       start node N again on its data
#   ./dev cluster down          stop all nodes and delete the cluster's data
#
# Indices get the default one replica, so a node can be lost without losing
# data; `[elasticsearch] urls` lists all three nodes.
set -euo pipefail
ES_HOME=${ES_HOME:?run through ./dev cluster}
ES_JAVA=${ES_JAVA:?run through ./dev cluster}
ES_USER=${ES_USER:?run through ./dev cluster}
STATE=${SLUICE_DEV_HOME:-/var/tmp/sluice-dev}/cluster
NODES=3
BASE_PORT=${SLUICE_DEV_CLUSTER_PORT:-19211}

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }
http_port() { echo $((BASE_PORT + $1 - 1)); }
url() { echo "http://127.0.0.1:$(http_port "$1")"; }

configure() {
  local i seeds="" masters=""
  for i in $(seq 1 $NODES); do
    seeds+="${seeds:+, }\"127.0.0.1:$(($(http_port "$i") + 100))\""
    masters+="${masters:+, }\"node-$i\""
  done
  for i in $(seq 1 $NODES); do
    local node=$STATE/node-$i
    [ -f "$node/config/elasticsearch.yml" ] && continue
    mkdir -p "$node"
    cp -r "$ES_HOME/config" "$node/config"
    cat > "$node/config/elasticsearch.yml" <<YML
cluster.name: sluice-cluster
node.name: node-$i
path.data: $node/data
path.logs: $node/logs
network.host: 127.0.0.1
http.port: $(http_port "$i")
transport.port: $(($(http_port "$i") + 100))
discovery.seed_hosts: [$seeds]
cluster.initial_master_nodes: [$masters]
xpack.security.enabled: false
xpack.ml.enabled: false
cluster.routing.allocation.disk.threshold_enabled: false
YML
    printf -- '-Xms256m\n-Xmx256m\n' > "$node/config/jvm.options.d/heap.options"
  done
  chown -R "$ES_USER" "$STATE"; chmod 755 "$STATE"
}

running() { [ -f "$STATE/node-$1/es.pid" ] && kill -0 "$(cat "$STATE/node-$1/es.pid")" 2>/dev/null; }

start() {
  running "$1" && { log "node-$1 already running on $(url "$1")"; return; }
  runuser -u "$ES_USER" -- env ES_JAVA_HOME="$ES_JAVA" ES_PATH_CONF="$STATE/node-$1/config" \
    ES_JAVA_OPTS="-Xms256m -Xmx256m" "$ES_HOME/bin/elasticsearch" -d -p "$STATE/node-$1/es.pid" \
    >/dev/null 2>&1 || die "node-$1 did not start (logs: $STATE/node-$1/logs)"
  log "node-$1 started on $(url "$1")"
}

health() {
  local i
  for i in $(seq 1 $NODES); do
    curl -fsS --max-time 2 "$(url "$i")/_cluster/health" 2>/dev/null && return
  done
  return 1
}

wait_nodes() {
  for _ in $(seq 1 240); do
    if health | grep -q "\"number_of_nodes\":$1,"; then return; fi
    sleep 1
  done
  die "the cluster did not reach $1 nodes in 240 s (logs: $STATE/node-*/logs)"
}

case "${1:-}" in
  up) configure; for i in $(seq 1 $NODES); do start "$i"; done; wait_nodes $NODES
      log "cluster up: urls = [$(for i in $(seq 1 $NODES); do printf '"%s"%s' "$(url "$i")" "$([ "$i" = $NODES ] || echo ', ')"; done)]";;
  status) health || echo "no node answers"; echo
      for i in $(seq 1 $NODES); do if running "$i"; then echo "node-$i: running on $(url "$i")"; else echo "node-$i: down"; fi; done;;
  kill) [ -n "${2:-}" ] || die "usage: ./dev cluster kill N"
      running "$2" || die "node-$2 is not running"
      kill -KILL "$(cat "$STATE/node-$2/es.pid")"; rm -f "$STATE/node-$2/es.pid"; log "node-$2 killed";;
  start) [ -n "${2:-}" ] || die "usage: ./dev cluster start N"; configure; start "$2";;
  down) for i in $(seq 1 $NODES); do
          if running "$i"; then kill "$(cat "$STATE/node-$i/es.pid")"; fi
        done
        sleep 2; for i in $(seq 1 $NODES); do running "$i" && kill -KILL "$(cat "$STATE/node-$i/es.pid")"; done
        rm -rf "$STATE"; log "cluster stopped and removed";;
  *) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2;;
esac
