#!/usr/bin/env bash
# POST /a/default/verify on loopback against the release binary, beside the Node peer's
# POST /verify, interleaved run by run so both see the same machine.
#
# Scenarios (wrk -t1 -c64 -d15s --latency, a warm-up first, RUNS measured runs, medians):
#   verify-miss        NTOK distinct tokens round-robin; Keyward runs with its verified-token
#                      cache off (KEYWARD_VERIFY_CACHE_ENTRIES=0), so every request is parsed
#                      and signature-checked. The peer (jose) has no cache.
#   verify-hit         one token sent again and again; Keyward with its default cache.
#   verify-10k-cached  Keyward only: the NTOK distinct tokens against the default cache
#                      (10,000 entries), i.e. what a default deployment does with the
#                      peer's workload after the first pass.
# Keyward's tokens come from POST /a/default/sessions (ES256, the default tenant's key), the
# peer's from its scripts/mint-tokens.mjs (ES256); both carry iss, sub, aud, exp, sid, jti
# and scope. A run with any non-2xx answer is marked "errors" in the table.
#
# Usage: bench/verify.sh        (after `cargo build --release`)
# Knobs: NTOK (10000), RUNS (3), DUR (15), WARM (5), CONNS (64), THREADS (1), PEER (1),
#   PEER_DIR (/tmp/peer-node, a copy of ../shared/bench/peer-node after `npm ci`),
#   OUT (target/bench/verify-<UTC stamp>), QUIET_PCT, QUIET_MAX, FOREIGN_MAX, RETRIES.
set -uo pipefail
cd "$(dirname "$0")/.."
NTOK=${NTOK:-10000}
OUT=${OUT:-$PWD/target/bench/verify-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
source bench/run-keyward.sh
source bench/lib.sh

trap 'peer_stop; keyward_cleanup' EXIT
trap 'exit 130' INT TERM
command -v wrk > /dev/null || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 1; }

# Mints $2 access tokens of the default tenant into $1 through POST /a/default/sessions
# (one keep-alive connection), each for its own session and user.
mint_keyward_tokens() {
  python3 - "$KW_PORT" "$KEYWARD_ADMIN_SECRET_FILE" "$2" "$1" <<'PY'
import http.client, json, sys
port, secret_file, n, out = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
secret = open(secret_file).read().strip()
conn = http.client.HTTPConnection("127.0.0.1", port)
headers = {"content-type": "application/json", "x-admin-secret": secret}
with open(out, "w") as f:
    for i in range(n):
        body = {"user_id": f"user-{i}", "client_id": "bench", "scope": "read write", "claims": {"role": "editor"}}
        conn.request("POST", "/a/default/sessions", json.dumps(body), headers)
        response = conn.getresponse()
        data = response.read()
        if response.status != 201:
            sys.exit(f"session {i}: HTTP {response.status} {data[:200]!r}")
        f.write(json.loads(data)["access_token"] + "\n")
PY
}

# smoke NAME URL TOKEN: the token must verify (200, "active":true), a tampered one must not.
smoke() {
  local name=$1 url=$2 token=$3 status tampered
  status=$(curl -s -o "$OUT/$name.smoke.json" -w '%{http_code}' -H 'content-type: application/json' \
    -d "{\"token\":\"$token\"}" "$url")
  if [ "$status" != 200 ] || ! grep -q '"active":true' "$OUT/$name.smoke.json"; then
    log "$name: a fresh token did not verify: HTTP $status $(head -c 300 "$OUT/$name.smoke.json")"
    return 1
  fi
  tampered="${token%?????}AAAAA"
  status=$(curl -s -o /dev/null -w '%{http_code}' -H 'content-type: application/json' \
    -d "{\"token\":\"$tampered\"}" "$url")
  [ "$status" = 401 ] || { log "$name: a tampered token gave HTTP $status, not 401"; return 1; }
  log "$name: smoke test passed (valid 200, tampered 401)"
}

# The outcomes Keyward counted, as evidence that the measured requests were verdicts of `ok`.
log_outcomes() {
  log "keyward outcomes: $(curl -s "$KW_URL/metrics" | grep '^keyward_verify_total' | tr '\n' ' ')"
}

record_env
log "results -> $OUT"

# --- cache off: the full verification path -------------------------------------------
keyward_start KEYWARD_VERIFY_CACHE_ENTRIES=0 || exit 1
# Tokens must outlive the whole benchmark, waits for a quiet machine included.
status=$(curl -s -o "$OUT/patch.json" -w '%{http_code}' -X PATCH -H 'content-type: application/json' \
  -H "x-admin-secret: $(cat "$KEYWARD_ADMIN_SECRET_FILE")" -d '{"access_token_ttl":"2h"}' "$KW_URL/admin/tenants/default")
[ "$status" = 200 ] || { log "PATCH access_token_ttl: HTTP $status $(cat "$OUT/patch.json")"; exit 1; }
log "minting $NTOK Keyward tokens"
mint_keyward_tokens "$OUT/keyward-tokens.txt" "$NTOK" || exit 1
head -1 "$OUT/keyward-tokens.txt" > "$OUT/keyward-one-token.txt"
log "keyward tokens: $(wc -l < "$OUT/keyward-tokens.txt"), $(head -1 "$OUT/keyward-tokens.txt" | wc -c) bytes each"
KW_VERIFY=$KW_URL/a/default/verify
smoke keyward "$KW_VERIFY" "$(head -1 "$OUT/keyward-tokens.txt")" || exit 1

servers="keyward"
if [ "$PEER" = 1 ]; then
  peer_start || exit 1
  node "$PEER_DIR/scripts/mint-tokens.mjs" --keys "$PEER_DIR/run/keys.json" --n "$NTOK" \
    --out "$OUT/peer-tokens.txt" 2>> "$OUT/bench.log" || exit 1
  head -1 "$OUT/peer-tokens.txt" > "$OUT/peer-one-token.txt"
  log "peer tokens: $(wc -l < "$OUT/peer-tokens.txt"), $(head -1 "$OUT/peer-tokens.txt" | wc -c) bytes each"
  smoke peer "$PEER_URL/verify" "$(head -1 "$OUT/peer-tokens.txt")" || exit 1
  servers="keyward peer"
fi

# run_scenario SCENARIO TOKEN-FILE-SUFFIX SERVERS
run_scenario() {
  local scenario=$1 suffix=$2 server_list=$3 server run url pids
  for server in $server_list; do
    if [ "$server" = keyward ]; then url=$KW_URL/a/default/verify; else url=$PEER_URL/verify; fi
    log "$server $scenario: warm-up ${WARM}s"
    TOKENS="$OUT/$server-$suffix.txt" warm "$server" "$scenario" -s bench/verify.lua "$url"
  done
  for run in $(seq "$RUNS"); do
    for server in $server_list; do
      run_one "$server" "$scenario" "$run" "$suffix" || { log "$server $scenario: no valid run"; exit 1; }
    done
  done
}

# run_one SERVER SCENARIO RUN TOKEN-FILE-SUFFIX: one measured run; Keyward is started again
# (same settings and database, so the tokens stay valid) if something else ended it.
run_one() {
  local attempt url pids
  for attempt in 1 2 3; do
    if [ "$1" = keyward ]; then
      keyward_ensure || return 1
      url=$KW_URL/a/default/verify; pids=$KW_PID
    else
      url=$PEER_URL/verify; pids=$PEER_PIDS
    fi
    TOKENS="$OUT/$1-$4.txt" measure "$1" "$2" "$3" "$pids" -s bench/verify.lua "$url" && return 0
  done
  return 1
}

run_scenario verify-miss tokens "$servers"
log_outcomes

# --- default cache: the same database and keys, so the tokens stay valid --------------
keyward_stop
keyward_start || exit 1
KW_VERIFY=$KW_URL/a/default/verify
smoke keyward "$KW_VERIFY" "$(head -1 "$OUT/keyward-tokens.txt")" || exit 1
run_scenario verify-hit one-token "$servers"
run_scenario verify-10k-cached tokens keyward
log_outcomes

[ "$KW_RESTARTS" = 0 ] || log "keyward was started again $KW_RESTARTS time(s) after something else ended it"
summarize | tee "$OUT/summary.md"
echo "raw wrk outputs, runs.csv and env.txt: $OUT" >&2
