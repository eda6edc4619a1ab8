#!/usr/bin/env bash
# GET /.well-known/jwks.json on loopback: 200 (full body) and 304 (If-None-Match with the
# current ETag), Keyward's release binary beside the Node peer, interleaved run by run so
# both see the same machine. wrk -t1 -c64 -d15s --latency, a warm-up first, RUNS measured
# runs each, medians in a markdown table (stdout and $OUT/summary.md).
#
# Usage: bench/jwks.sh          (after `cargo build --release`)
# Knobs: SCENARIOS ("jwks-200 jwks-304"; add "stack" for the HTTP stack alone: Keyward's
#   GET /healthz beside the peer's GET /hello), RUNS (3), DUR (15), WARM (5), CONNS (64),
#   THREADS (1), PEER (1; 0 = Keyward only),
#   PEER_DIR (/tmp/peer-node, a copy of ../shared/bench/peer-node after `npm ci`),
#   OUT (target/bench/jwks-<UTC stamp>), QUIET_PCT, QUIET_MAX, FOREIGN_MAX, RETRIES.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/target/bench/jwks-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
source bench/run-keyward.sh
source bench/lib.sh
SCENARIOS=${SCENARIOS:-jwks-200 jwks-304}

trap 'peer_stop; keyward_cleanup' EXIT
trap 'exit 130' INT TERM
command -v wrk > /dev/null || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 1; }

record_env
log "results -> $OUT"
keyward_start || exit 1
KW_PIDS=$KW_PID
KW_ETAG=$(etag_of "$KW_URL/.well-known/jwks.json")
status=$(curl -s -o /dev/null -w '%{http_code}' -H "If-None-Match: $KW_ETAG" "$KW_URL/.well-known/jwks.json")
[ "$status" = 304 ] || { log "keyward: If-None-Match $KW_ETAG gave $status, not 304"; exit 1; }
log "keyward JWKS: $(curl -s "$KW_URL/.well-known/jwks.json" | wc -c) bytes, ETag $KW_ETAG"

servers="keyward"
if [ "$PEER" = 1 ]; then
  peer_start || exit 1
  PEER_ETAG=$(etag_of "$PEER_URL/.well-known/jwks.json")
  log "peer JWKS: $(curl -s "$PEER_URL/.well-known/jwks.json" | wc -c) bytes, ETag $PEER_ETAG"
  servers="keyward peer"
fi

# wrk_args SERVER SCENARIO -> ARGS
wrk_args() {
  local url pids etag
  if [ "$1" = keyward ]; then url=$KW_URL; etag=$KW_ETAG; else url=$PEER_URL; etag=$PEER_ETAG; fi
  case $2 in
    jwks-200) ARGS=("$url/.well-known/jwks.json") ;;
    jwks-304) ARGS=(-H "If-None-Match: $etag" "$url/.well-known/jwks.json") ;;
    # The cheapest GET each server has: what its HTTP stack alone costs.
    stack) if [ "$1" = keyward ]; then ARGS=("$url/healthz"); else ARGS=("$url/hello"); fi ;;
  esac
}
pids_of() { if [ "$1" = keyward ]; then echo "$KW_PIDS"; else echo "$PEER_PIDS"; fi; }

# run_one SERVER SCENARIO RUN: one measured run; Keyward is started again if something
# ended it (same database, so the same keys and ETag).
run_one() {
  local attempt
  for attempt in 1 2 3; do
    if [ "$1" = keyward ]; then keyward_ensure || return 1; KW_PIDS=$KW_PID; fi
    wrk_args "$1" "$2"
    measure "$1" "$2" "$3" "$(pids_of "$1")" "${ARGS[@]}" && return 0
  done
  return 1
}

for scenario in $SCENARIOS; do
  for server in $servers; do
    wrk_args "$server" "$scenario"
    log "$server $scenario: warm-up ${WARM}s"
    warm "$server" "$scenario" "${ARGS[@]}"
  done
  for run in $(seq "$RUNS"); do
    for server in $servers; do
      run_one "$server" "$scenario" "$run" || { log "$server $scenario: no valid run"; exit 1; }
    done
  done
done
[ "$KW_RESTARTS" = 0 ] || log "keyward was started again $KW_RESTARTS time(s) after something else ended it"

summarize | tee "$OUT/summary.md"
echo "raw wrk outputs, runs.csv and env.txt: $OUT" >&2
