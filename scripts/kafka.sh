#!/usr/bin/env bash
# Runs a single-node Apache Kafka (KRaft, combined broker and controller) on
# 127.0.0.1 for the broker tests, from the release jars on Maven Central.
#
# Usage: scripts/kafka.sh start|stop|status|fetch|topics [ARGS...]|run-class CLASS [ARGS...]
#
#   fetch      download the Kafka jars with Maven into the cache (no-op when cached)
#   start      format a fresh, empty storage directory and start the broker
#   stop       stop the broker (SIGTERM, then SIGKILL after KAFKA_STOP_TIMEOUT)
#   status     exit 0 when the broker is running and accepts connections
#   topics     run kafka-topics against the broker (default: --list)
#   run-class  run any main class from the Kafka jars, e.g.
#              org.apache.kafka.tools.ConsoleProducer --bootstrap-server 127.0.0.1:19092 --topic t
#
# Environment:
#   KAFKA_VERSION          Kafka release to run (default 4.1.1)
#   KAFKA_PORT             client listener port (default 19092)
#   KAFKA_CONTROLLER_PORT  KRaft controller listener port (default 19093)
#   KAFKA_HEAP_OPTS        broker heap flags (default -Xms256m -Xmx512m)
#   KAFKA_START_TIMEOUT    seconds to wait for the broker to respond (default 90)
#   KAFKA_STOP_TIMEOUT     seconds between SIGTERM and SIGKILL (default 30)
#   BLAMELESS_CACHE        cache directory (default <repo>/.cache)
#   JAVA_HOME              Java 17 or newer; otherwise `java` from PATH
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
readonly KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
readonly KAFKA_PORT="${KAFKA_PORT:-19092}"
readonly KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-19093}"
readonly KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
readonly START_TIMEOUT_SECONDS="${KAFKA_START_TIMEOUT:-90}"
readonly STOP_TIMEOUT_SECONDS="${KAFKA_STOP_TIMEOUT:-30}"

readonly CACHE_DIR="${BLAMELESS_CACHE:-$REPO_ROOT/.cache}"
readonly LIBS_DIR="$CACHE_DIR/kafka/$KAFKA_VERSION/libs"
readonly RUN_DIR="$CACHE_DIR/kafka/run"
readonly DATA_DIR="$RUN_DIR/data"
readonly PID_FILE="$RUN_DIR/kafka.pid"
readonly SERVER_LOG="$RUN_DIR/server.log"
readonly SERVER_PROPERTIES="$RUN_DIR/server.properties"

readonly POM="$REPO_ROOT/scripts/kafka/pom.xml"
readonly LOG4J2_CONFIG="$REPO_ROOT/scripts/kafka/log4j2.properties"
readonly BOOTSTRAP="127.0.0.1:$KAFKA_PORT"

# A file that fetch writes last, so a fetch interrupted halfway is redone.
readonly FETCH_MARKER=".fetch-complete"

JAVA="java"
if [[ -n "${JAVA_HOME:-}" ]]; then
  JAVA="$JAVA_HOME/bin/java"
fi
readonly JAVA

# The fetch staging directory, global so that the EXIT trap can remove it.
staging=""

log() {
  echo "kafka.sh: $*" >&2
}

die() {
  log "error: $*"
  exit 1
}

# Prints the header comment of this script and exits with status $1: to
# stdout for --help, to stderr for a usage error.
usage() {
  local text
  text="$(sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//')"
  if (($1 == 0)); then
    echo "$text"
  else
    echo "$text" >&2
  fi
  exit "$1"
}

# Succeeds when something accepts TCP connections on 127.0.0.1:$1.
port_open() {
  (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Prints the pid from the pid file when that process is alive and is a Kafka
# broker, so that a stale pid file whose pid was reused is ignored.
running_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(cat "$PID_FILE")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  if command -v ps >/dev/null 2>&1; then
    ps -p "$pid" -o args= 2>/dev/null | grep -q 'kafka\.Kafka' || return 1
  fi
  echo "$pid"
}

require_java() {
  command -v "$JAVA" >/dev/null 2>&1 || die "java not found: install Java 17 or newer, or set JAVA_HOME."
  local version major
  version="$("$JAVA" -version 2>&1 | sed -n 's/.*version "\([^"]*\)".*/\1/p' | head -n 1)"
  major="${version%%.*}"
  if [[ "$major" == "1" ]]; then
    major="$(echo "$version" | cut -d. -f2)"
  fi
  if [[ ! "$major" =~ ^[0-9]+$ ]] || ((major < 17)); then
    die "Kafka $KAFKA_VERSION requires Java 17 or newer, but $JAVA reports version '${version:-unknown}'. Set JAVA_HOME to a newer JDK."
  fi
}

# Runs a main class from the Kafka jars with a small client heap. Used for the
# storage format tool and the CLI tools, never for the broker itself.
run_class() {
  local main_class="$1"
  shift
  [[ -f "$LIBS_DIR/$FETCH_MARKER" ]] || die "Kafka $KAFKA_VERSION jars are not in $LIBS_DIR: run 'scripts/kafka.sh fetch' first."
  # TieredStopAtLevel=1 trades peak speed for a faster start, which is what a
  # short-lived CLI tool needs.
  "$JAVA" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$LOG4J2_CONFIG" \
    -cp "$LIBS_DIR/*" "$main_class" "$@"
}

cmd_fetch() {
  if [[ -f "$LIBS_DIR/$FETCH_MARKER" ]]; then
    log "Kafka $KAFKA_VERSION jars are already in $LIBS_DIR."
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || die "mvn not found: install Apache Maven 3 (Debian package 'maven')."

  log "Fetching Kafka $KAFKA_VERSION jars from Maven Central into $LIBS_DIR ..."
  mkdir -p "$CACHE_DIR/kafka"
  staging="$(mktemp -d "$CACHE_DIR/kafka/.fetch.XXXXXX")"
  # The staging directory is removed on any exit, so a failed fetch leaves no
  # half-filled libs directory behind.
  trap 'rm -rf "$staging"' EXIT

  # Maven writes target/ next to the POM when it has anything to build, so it
  # gets a scratch copy of the POM in the staging directory.
  cp "$POM" "$staging/pom.xml"
  # Maven 3.8 prints stray ANSI color resets even with -q -B, so its output is
  # kept in a file and shown only when it fails.
  if ! mvn -B -q --no-transfer-progress -f "$staging/pom.xml" \
    -Dkafka.version="$KAFKA_VERSION" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$staging/libs" \
    >"$staging/mvn.log" 2>&1; then
    sed 's/\x1b\[[0-9;]*m//g' "$staging/mvn.log" >&2
    die "mvn failed to fetch org.apache.kafka:kafka_2.13:$KAFKA_VERSION. Check that the version exists on Maven Central and that Maven can reach it."
  fi
  [[ -f "$staging/libs/kafka_2.13-$KAFKA_VERSION.jar" ]] \
    || die "mvn finished but kafka_2.13-$KAFKA_VERSION.jar is missing from $staging/libs."

  touch "$staging/libs/$FETCH_MARKER"
  rm -rf "$LIBS_DIR"
  mkdir -p "$(dirname "$LIBS_DIR")"
  mv "$staging/libs" "$LIBS_DIR"
  rm -rf "$staging"
  trap - EXIT
  log "Fetched $(find "$LIBS_DIR" -name '*.jar' | wc -l) jars ($(du -sh "$LIBS_DIR" | cut -f1))."
}

write_server_properties() {
  cat >"$SERVER_PROPERTIES" <<EOF
# Written by scripts/kafka.sh start; rewritten at every start.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$DATA_DIR

# Tests create every topic they use, as blameless topology apply does.
auto.create.topics.enable=false
num.partitions=1

# A single node can only hold one replica of the internal topics. One
# partition each also makes the first consumer group and the first
# transaction start faster than with the defaults (50 partitions each).
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
}

# Waits until the broker returns an ApiVersions response, or fails when the
# process exits or START_TIMEOUT_SECONDS pass.
wait_until_ready() {
  local pid="$1"
  local deadline=$((SECONDS + START_TIMEOUT_SECONDS))
  # One probe may not hang past the deadline when the port accepts
  # connections but the broker does not respond.
  local probe_limit=()
  if command -v timeout >/dev/null 2>&1; then
    probe_limit=(timeout 20)
  fi
  while ((SECONDS < deadline)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "the broker process $pid exited during startup. Last 40 lines of $SERVER_LOG:"
      tail -n 40 "$SERVER_LOG" >&2 || true
      rm -f "$PID_FILE"
      return 1
    fi
    if port_open "$KAFKA_PORT" \
      && ${probe_limit[@]+"${probe_limit[@]}"} "${BASH_SOURCE[0]}" run-class \
        org.apache.kafka.tools.BrokerApiVersionsCommand --bootstrap-server "$BOOTSTRAP" >/dev/null 2>&1; then
      return 0
    fi
    sleep 1
  done
  log "the broker did not respond on $BOOTSTRAP within ${START_TIMEOUT_SECONDS}s. Last 40 lines of $SERVER_LOG:"
  tail -n 40 "$SERVER_LOG" >&2 || true
  return 1
}

cmd_start() {
  local pid
  if pid="$(running_pid)"; then
    if port_open "$KAFKA_PORT"; then
      echo "Kafka is already running on $BOOTSTRAP (pid $pid)."
      return 0
    fi
    log "Kafka (pid $pid) is running but does not accept connections on $BOOTSTRAP: restarting it."
    cmd_stop
  fi
  if port_open "$KAFKA_PORT"; then
    die "port $KAFKA_PORT on 127.0.0.1 is used by another process. Stop it or set KAFKA_PORT."
  fi
  if port_open "$KAFKA_CONTROLLER_PORT"; then
    die "port $KAFKA_CONTROLLER_PORT on 127.0.0.1 is used by another process. Stop it or set KAFKA_CONTROLLER_PORT."
  fi

  cmd_fetch
  require_java

  # Every start begins with empty storage, so no topic or offset survives
  # from an earlier test run.
  rm -rf "$RUN_DIR"
  mkdir -p "$DATA_DIR"
  write_server_properties
  echo "$KAFKA_VERSION" >"$RUN_DIR/version"

  # A KRaft cluster id is 16 random bytes in URL-safe base64 without padding,
  # the format that `kafka-storage random-uuid` prints. An id that starts with
  # "-" would be parsed as an option, so it is drawn again.
  local cluster_id="-"
  while [[ "$cluster_id" == -* ]]; do
    cluster_id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
  done
  if ! run_class kafka.tools.StorageTool format --cluster-id "$cluster_id" \
    --config "$SERVER_PROPERTIES" >"$RUN_DIR/format.log" 2>&1; then
    cat "$RUN_DIR/format.log" >&2
    die "formatting the storage directory $DATA_DIR failed."
  fi

  log "Starting Kafka $KAFKA_VERSION on $BOOTSTRAP (log: $SERVER_LOG) ..."
  # setsid puts the broker in its own session, so a Ctrl-C in the terminal that
  # ran this script does not reach it. It runs until `scripts/kafka.sh stop`.
  local launcher=()
  if command -v setsid >/dev/null 2>&1; then
    launcher=(setsid)
  fi
  # shellcheck disable=SC2086 # KAFKA_HEAP_OPTS holds several flags.
  ${launcher[@]+"${launcher[@]}"} nohup "$JAVA" $KAFKA_HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -Djava.awt.headless=true -Dlog4j2.configurationFile="$LOG4J2_CONFIG" \
    -cp "$LIBS_DIR/*" kafka.Kafka "$SERVER_PROPERTIES" \
    >"$SERVER_LOG" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$PID_FILE"

  if ! wait_until_ready "$pid"; then
    cmd_stop >/dev/null 2>&1 || true
    die "Kafka $KAFKA_VERSION failed to start."
  fi
  echo "Kafka $KAFKA_VERSION is ready on $BOOTSTRAP."
}

cmd_stop() {
  local pid
  if ! pid="$(running_pid)"; then
    rm -f "$PID_FILE"
    echo "Kafka is not running."
    return 0
  fi

  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT_SECONDS))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "Kafka (pid $pid) did not stop within ${STOP_TIMEOUT_SECONDS}s of SIGTERM: sending SIGKILL."
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do
      sleep 0.2
    done
  fi
  rm -f "$PID_FILE"
  echo "Kafka stopped (pid $pid)."
}

cmd_status() {
  local pid
  if pid="$(running_pid)" && port_open "$KAFKA_PORT"; then
    echo "Kafka $(cat "$RUN_DIR/version" 2>/dev/null || echo "$KAFKA_VERSION") is running on $BOOTSTRAP (pid $pid)."
    return 0
  fi
  if pid="$(running_pid)"; then
    echo "Kafka (pid $pid) is running but does not accept connections on $BOOTSTRAP."
    return 1
  fi
  echo "Kafka is not running."
  return 1
}

cmd_topics() {
  if (($# == 0)); then
    set -- --list
  fi
  run_class org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" "$@"
}

main() {
  (($# >= 1)) || usage 2
  local command="$1"
  shift
  case "$command" in
    fetch) cmd_fetch ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    topics) cmd_topics "$@" ;;
    run-class)
      (($# >= 1)) || die "run-class needs a main class, e.g. org.apache.kafka.tools.ConsoleProducer."
      run_class "$@"
      ;;
    -h | --help | help) usage 0 ;;
    *)
      log "unknown command '$command'."
      usage 2
      ;;
  esac
}

main "$@"
