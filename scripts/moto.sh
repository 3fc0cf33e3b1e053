#!/usr/bin/env bash
# Runs moto's standalone server, an in-memory mock of the AWS APIs, on
# 127.0.0.1 as a local S3 endpoint for the archive tests.
#
# Usage: scripts/moto.sh start|stop|status
#
#   start   install moto[server] into a virtualenv in the cache (once), start
#           the server in the background and wait until it serves S3 requests
#   stop    stop the server (SIGTERM, then SIGKILL after 10 s)
#   status  exit 0 when the server is running and serves S3 requests
#
# Environment:
#   MOTO_PORT        listen port on 127.0.0.1 (default 19000)
#   MOTO_VERSION     moto release installed from PyPI (default 5.2.5)
#   BLAMELESS_CACHE  cache directory (default <repo>/.cache)
#   PYTHON           Python 3 interpreter that creates the virtualenv (default python3)
#
# Clients point their S3 endpoint at http://127.0.0.1:$MOTO_PORT with any
# access key and secret. moto keeps everything in memory, so every start
# begins with no buckets.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
readonly MOTO_PORT="${MOTO_PORT:-19000}"
readonly MOTO_VERSION="${MOTO_VERSION:-5.2.5}"
readonly PYTHON="${PYTHON:-python3}"
readonly START_TIMEOUT_SECONDS=60
readonly STOP_TIMEOUT_SECONDS=10

readonly CACHE_DIR="${BLAMELESS_CACHE:-$REPO_ROOT/.cache}"
readonly VENV_DIR="$CACHE_DIR/moto/venv"
# Written after a successful install, so an interrupted install is redone.
readonly INSTALL_MARKER="$VENV_DIR/.installed-moto-$MOTO_VERSION"
readonly RUN_DIR="$CACHE_DIR/moto/run"
readonly PID_FILE="$RUN_DIR/moto.pid"
readonly SERVER_LOG="$RUN_DIR/moto.log"
readonly ENDPOINT="http://127.0.0.1:$MOTO_PORT"

log() {
  echo "moto.sh: $*" >&2
}

die() {
  log "error: $*"
  exit 1
}

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

# Succeeds when the server returns an S3 ListBuckets response on GET /.
list_buckets_succeeds() {
  [[ -x "$VENV_DIR/bin/python" ]] || return 1
  "$VENV_DIR/bin/python" - "$ENDPOINT/" <<'EOF' 2>/dev/null
import sys
import urllib.request

with urllib.request.urlopen(sys.argv[1], timeout=2) as response:
    sys.exit(0 if b"ListAllMyBucketsResult" in response.read() else 1)
EOF
}

# Prints the pid from the pid file when that process is alive and is moto.
running_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(cat "$PID_FILE")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  if command -v ps >/dev/null 2>&1; then
    ps -p "$pid" -o args= 2>/dev/null | grep -q 'moto_server' || return 1
  fi
  echo "$pid"
}

install_moto() {
  if [[ -f "$INSTALL_MARKER" ]]; then
    return 0
  fi
  command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found: install Python 3 or set PYTHON."

  log "Installing moto[server]==$MOTO_VERSION from PyPI into $VENV_DIR ..."
  rm -rf "$VENV_DIR"
  mkdir -p "$(dirname "$VENV_DIR")"
  if ! "$PYTHON" -m venv "$VENV_DIR" >"$CACHE_DIR/moto/install.log" 2>&1; then
    cat "$CACHE_DIR/moto/install.log" >&2
    die "creating a virtualenv with $PYTHON failed. On Debian, install the python3-venv package."
  fi
  if ! "$VENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check \
    "moto[server]==$MOTO_VERSION" >>"$CACHE_DIR/moto/install.log" 2>&1; then
    cat "$CACHE_DIR/moto/install.log" >&2
    die "pip failed to install moto[server]==$MOTO_VERSION."
  fi
  touch "$INSTALL_MARKER"
}

cmd_start() {
  local pid
  if pid="$(running_pid)" && list_buckets_succeeds; then
    echo "moto is already running on $ENDPOINT (pid $pid)."
    return 0
  fi
  if pid="$(running_pid)"; then
    log "moto (pid $pid) is running but does not respond on $ENDPOINT: restarting it."
    cmd_stop
  fi
  if (: <"/dev/tcp/127.0.0.1/$MOTO_PORT") 2>/dev/null; then
    die "port $MOTO_PORT on 127.0.0.1 is used by another process. Stop it or set MOTO_PORT."
  fi

  install_moto
  rm -rf "$RUN_DIR"
  mkdir -p "$RUN_DIR"

  log "Starting moto $MOTO_VERSION on $ENDPOINT (log: $SERVER_LOG) ..."
  local launcher=()
  if command -v setsid >/dev/null 2>&1; then
    launcher=(setsid)
  fi
  ${launcher[@]+"${launcher[@]}"} nohup "$VENV_DIR/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" \
    >"$SERVER_LOG" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$PID_FILE"

  local deadline=$((SECONDS + START_TIMEOUT_SECONDS))
  until list_buckets_succeeds; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "moto (pid $pid) exited during startup. Last 40 lines of $SERVER_LOG:"
      tail -n 40 "$SERVER_LOG" >&2 || true
      rm -f "$PID_FILE"
      die "moto failed to start."
    fi
    if ((SECONDS >= deadline)); then
      log "moto did not respond on $ENDPOINT within ${START_TIMEOUT_SECONDS}s. Last 40 lines of $SERVER_LOG:"
      tail -n 40 "$SERVER_LOG" >&2 || true
      cmd_stop >/dev/null
      die "moto failed to start."
    fi
    sleep 0.5
  done
  echo "moto $MOTO_VERSION is ready on $ENDPOINT."
}

cmd_stop() {
  local pid
  if ! pid="$(running_pid)"; then
    rm -f "$PID_FILE"
    echo "moto is not running."
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT_SECONDS))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "moto (pid $pid) did not stop within ${STOP_TIMEOUT_SECONDS}s of SIGTERM: sending SIGKILL."
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PID_FILE"
  echo "moto stopped (pid $pid)."
}

cmd_status() {
  local pid
  if pid="$(running_pid)" && list_buckets_succeeds; then
    echo "moto is running on $ENDPOINT (pid $pid)."
    return 0
  fi
  echo "moto is not running."
  return 1
}

main() {
  (($# == 1)) || usage 2
  case "$1" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    -h | --help | help) usage 0 ;;
    *)
      log "unknown command '$1'."
      usage 2
      ;;
  esac
}

main "$@"
