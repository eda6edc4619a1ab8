#!/usr/bin/env bash
# Runs the release binary for a benchmark: `target/release/keyward serve` on a free
# 127.0.0.1 port with a throw-away SQLite database, generated master key and admin secret,
# and warn-level logs. The server is stopped by its PID, never by name.
#
# Two ways to use it:
#   bench/run-keyward.sh [COMMAND...]   start, run COMMAND with KEYWARD_URL and
#                                       KEYWARD_ADMIN_SECRET_FILE exported (default: wait for
#                                       Ctrl-C), then stop the server (trap on exit).
#   source bench/run-keyward.sh         define keyward_start / keyward_stop for a script that
#                                       sets its own trap (bench/jwks.sh, bench/verify.sh).
#
# keyward_start [VAR=VALUE...] starts a server with extra environment (for example
# KEYWARD_VERIFY_CACHE_ENTRIES=0) and sets KW_PID, KW_PORT, KW_URL. Called again in the
# same shell it reuses the same database, master key and admin secret (KW_DIR), so a
# restart keeps the keys and tokens minted earlier stay valid. keyward_ensure restarts a
# server that is no longer running, with the same settings.
#
# Knobs: KEYWARD_BIN (default target/release/keyward), KW_DIR (default: a new temp dir,
# removed on keyward_cleanup), KW_RATE (the verify and sessions rate limits, default
# 1000000/s).

KW_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KEYWARD_BIN=${KEYWARD_BIN:-$KW_ROOT/target/release/keyward}
# Rate limits far above what loopback can reach, so a benchmark measures verification and
# not 429s; the limiter itself stays on and its cost is part of every figure.
KW_RATE=${KW_RATE:-1000000/s}
KW_PID=""; KW_PORT=""; KW_URL=""; KW_OWN_DIR=""; KW_ENV=(); KW_RESTARTS=0

kw_log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

# A TCP port nothing listens on right now (the kernel picks it).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Creates the database directory, master key and admin secret once per shell.
kw_prepare() {
  [ -x "$KEYWARD_BIN" ] || { kw_log "no $KEYWARD_BIN: run 'cargo build --release' first"; return 1; }
  if [ -z "${KW_DIR:-}" ]; then
    KW_DIR=$(mktemp -d /tmp/keyward-bench.XXXXXX)
    KW_OWN_DIR=1
  fi
  mkdir -p "$KW_DIR"
  chmod 700 "$KW_DIR"
  if [ ! -s "$KW_DIR/master-keys" ]; then
    (umask 077 && "$KEYWARD_BIN" kek generate --id bench > "$KW_DIR/master-keys") || return 1
  fi
  if [ ! -s "$KW_DIR/admin-secret" ]; then
    (umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > "$KW_DIR/admin-secret")
  fi
  export KEYWARD_ADMIN_SECRET_FILE=$KW_DIR/admin-secret
}

keyward_start() {
  kw_prepare || return 1
  KW_ENV=("$@")
  KW_PORT=$(free_port)
  KW_URL=http://127.0.0.1:$KW_PORT
  local log=$KW_DIR/server-$KW_PORT.log
  env "$@" \
    KEYWARD_LISTEN="127.0.0.1:$KW_PORT" \
    DATABASE_URL="sqlite://$KW_DIR/keyward.db?mode=rwc" \
    KEYWARD_ADMIN_SECRETS="$(cat "$KW_DIR/admin-secret")" \
    KEYWARD_MASTER_KEYS="$(cat "$KW_DIR/master-keys")" \
    KEYWARD_LOG_LEVEL=warn \
    RL_VERIFY_PER_IP="$KW_RATE" RL_VERIFY_PER_TENANT="$KW_RATE" RL_SESSIONS_PER_ISSUER="$KW_RATE" \
    "$KEYWARD_BIN" serve > "$log" 2>&1 &
  KW_PID=$!
  for _ in $(seq 150); do
    if curl -fsS -o /dev/null "$KW_URL/readyz" 2>/dev/null; then
      kw_log "keyward ready: pid $KW_PID, $KW_URL${*:+ ($*)}"
      return 0
    fi
    if ! kill -0 "$KW_PID" 2>/dev/null; then
      kw_log "keyward exited during start-up; its log:"
      tail -20 "$log" >&2
      KW_PID=""
      return 1
    fi
    sleep 0.2
  done
  kw_log "keyward not ready after 30 s; stopping it"
  keyward_stop
  return 1
}

keyward_stop() {
  [ -n "$KW_PID" ] || return 0
  kill -TERM "$KW_PID" 2>/dev/null
  for _ in $(seq 75); do kill -0 "$KW_PID" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$KW_PID" 2>/dev/null; then
    kw_log "keyward $KW_PID still running after 15 s: SIGKILL"
    kill -KILL "$KW_PID" 2>/dev/null
  fi
  wait "$KW_PID" 2>/dev/null
  kw_log "keyward $KW_PID stopped"
  KW_PID=""
}

# Starts the server again, with the same settings, if it is no longer running (on a shared
# machine someone else's clean-up may end it); the port changes, so callers re-read KW_URL.
keyward_ensure() {
  if [ -n "$KW_PID" ] && kill -0 "$KW_PID" 2>/dev/null; then
    return 0
  fi
  kw_log "keyward (pid ${KW_PID:-none}) is not running: starting it again"
  KW_RESTARTS=$(( KW_RESTARTS + 1 ))
  wait "$KW_PID" 2>/dev/null
  KW_PID=""
  keyward_start "${KW_ENV[@]}"
}

# Stops the server and removes the temp directory if this script created it.
keyward_cleanup() {
  keyward_stop
  if [ -n "$KW_OWN_DIR" ] && [ -n "${KW_DIR:-}" ]; then
    rm -rf "$KW_DIR"
  fi
}

# Executed rather than sourced: start, run the command (or wait), stop.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -uo pipefail
  trap 'keyward_cleanup' EXIT
  trap 'exit 130' INT TERM
  keyward_start || exit 1
  export KEYWARD_URL=$KW_URL
  if [ $# -gt 0 ]; then
    "$@"
  else
    kw_log "serving at $KEYWARD_URL (admin secret in $KEYWARD_ADMIN_SECRET_FILE); Ctrl-C stops it"
    wait "$KW_PID"
  fi
fi
