#!/usr/bin/env bash
# Runs the whole test suite, #[ignore]d tests included, against a
# real single-node Kafka on 127.0.0.1 (started with scripts/kafka.sh) and
# moto's S3 server on 127.0.0.1 (started with scripts/moto.sh).
#
# Usage: scripts/test.sh [CARGO_TEST_ARGS...] [-- TEST_BINARY_ARGS...]
#
#   scripts/test.sh                      every test
#   scripts/test.sh window               tests whose name contains "window"
#   scripts/test.sh -- --nocapture       every test, with test output shown
#
# A broker or moto server that is already running (scripts/kafka.sh status,
# scripts/moto.sh status) is reused and left running. Otherwise this script
# starts a fresh one and stops it on exit. The tests find the broker in
# BLAMELESS_TEST_BROKERS and the S3 endpoint in BLAMELESS_TEST_S3_ENDPOINT.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
cd "$REPO_ROOT"

# Wall-clock seconds with milliseconds, for the step timings.
now() {
  date +%s.%N
}

elapsed_since() {
  awk -v start="$1" -v end="$(now)" 'BEGIN { printf "%.1f", end - start }'
}

SUITE_START="$(now)"
readonly SUITE_START

# Arguments before a `--` go to cargo test, those after it to the test binaries.
cargo_args=()
harness_args=()
while (($# > 0)); do
  if [[ "$1" == "--" ]]; then
    shift
    harness_args=("$@")
    break
  fi
  cargo_args+=("$1")
  shift
done

# Stops a service that this script started: NAME as shown in the log, and
# SCRIPT, its start/stop script in scripts/.
# shellcheck disable=SC2317 # Called by the EXIT trap.
stop_service() {
  local name="$1" script="$2" start
  start="$(now)"
  echo "==> Stopping $name"
  "scripts/$script" stop || true
  echo "<== Stopped $name in $(elapsed_since "$start")s"
}

kafka_started=false
moto_started=false
# shellcheck disable=SC2317 # Called by the EXIT trap.
stop_services() {
  if [[ "$moto_started" == true ]]; then
    stop_service moto moto.sh
  fi
  if [[ "$kafka_started" == true ]]; then
    stop_service Kafka kafka.sh
  fi
}
trap stop_services EXIT

# Reuses a service that is already running, or starts it. NAME is shown in
# the log, SCRIPT is its start/stop script in scripts/, and FLAG is the
# variable set to true before a start, so the EXIT trap stops only what this
# script began.
start_service() {
  local name="$1" script="$2" flag="$3" step_start
  if "scripts/$script" status >/dev/null 2>&1; then
    echo "==> Reusing the $name that is already running: $("scripts/$script" status)"
    return 0
  fi
  printf -v "$flag" true
  step_start="$(now)"
  echo "==> Starting $name"
  "scripts/$script" start
  echo "<== Started $name in $(elapsed_since "$step_start")s"
}

start_service "Kafka broker" kafka.sh kafka_started
start_service "moto server" moto.sh moto_started

export BLAMELESS_TEST_BROKERS="127.0.0.1:${KAFKA_PORT:-19092}"
export BLAMELESS_TEST_S3_ENDPOINT="http://127.0.0.1:${MOTO_PORT:-19000}"
# The S3 tests give object_store an endpoint and credentials; this keeps any
# AWS client from looking for the instance metadata service.
export AWS_EC2_METADATA_DISABLED=true

step_start="$(now)"
echo "==> cargo test --workspace --all-targets --features blameless/failpoints ${cargo_args[*]} -- --include-ignored ${harness_args[*]}"
set +e
cargo test --workspace --all-targets --features blameless/failpoints ${cargo_args[@]+"${cargo_args[@]}"} \
  -- --include-ignored ${harness_args[@]+"${harness_args[@]}"}
cargo_status=$?
set -e
echo "<== cargo test exited with status $cargo_status in $(elapsed_since "$step_start")s"
echo "Total time: $(elapsed_since "$SUITE_START")s (before stopping Kafka and moto)"

exit "$cargo_status"
