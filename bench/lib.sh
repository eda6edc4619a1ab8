# shellcheck shell=bash
# Shared by bench/jwks.sh and bench/verify.sh: the idle-machine guard, CPU accounting from
# /proc, one measured wrk run, the peer (../shared/bench/peer-node) start/stop, and the
# summary table. Sourced, not run.
#
# The machine has 2 cores and is shared, and wrk runs on the same cores as the server, so
# every run records the CPU the server used (µs per request, the figure least sensitive to
# contention), the cores wrk used and the "foreign" CPU of everything else. A run with
# more than FOREIGN_MAX foreign cores is repeated (up to RETRIES times) and, if it stays
# contaminated, kept but marked in the table.

TCK=$(getconf CLK_TCK)
DUR=${DUR:-15}; RUNS=${RUNS:-3}; WARM=${WARM:-5}; CONNS=${CONNS:-64}; THREADS=${THREADS:-1}
QUIET_PCT=${QUIET_PCT:-10}; QUIET_MAX=${QUIET_MAX:-120}; FOREIGN_MAX=${FOREIGN_MAX:-0.15}; RETRIES=${RETRIES:-2}
PEER=${PEER:-1}; PEER_DIR=${PEER_DIR:-/tmp/peer-node}
PEER_PID=""; PEER_PORT=""; PEER_URL=""; PEER_PIDS=""

log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT/bench.log" >&2; }

# PIDs of $1 and all its descendants.
tree_pids() {
  local frontier=$1 all=$1 next p
  while [ -n "$frontier" ]; do
    next=""
    for p in $frontier; do next="$next $(ps -o pid= --ppid "$p" 2>/dev/null | tr '\n' ' ')"; done
    next=$(echo $next); all="$all $next"; frontier=$next
  done
  echo $all
}

# "utime stime" clock ticks summed over the given PIDs (all their threads).
proc_ticks() {
  local user=0 sys=0 p line
  for p in "$@"; do
    { read -r line < "/proc/$p/stat"; } 2>/dev/null || continue
    line=${line##*) }
    # shellcheck disable=SC2086
    set -- $line   # $1 is field 3 (state): utime is ${12}, stime ${13}
    user=$(( user + ${12} )); sys=$(( sys + ${13} ))
  done
  echo "$user $sys"
}

# Machine-wide busy ticks (everything but idle and iowait), from /proc/stat.
busy_ticks() {
  local _cpu user nice system idle iowait irq softirq steal _rest
  read -r _cpu user nice system idle iowait irq softirq steal _rest < /proc/stat
  echo $(( user + nice + system + irq + softirq + steal ))
}

# Waits until less than QUIET_PCT % of one core is busy over 2 s, at most QUIET_MAX s;
# then measures anyway (the foreign-CPU check below still judges the run).
wait_quiet() {
  local waited=0 b0 b1 pct
  while :; do
    b0=$(busy_ticks); sleep 2; b1=$(busy_ticks)
    pct=$(( (b1 - b0) * 100 / (2 * TCK) ))
    [ "$pct" -le "$QUIET_PCT" ] && { [ $waited -gt 0 ] && log "  machine quiet after ${waited}s"; return 0; }
    [ $waited -eq 0 ] && log "  machine busy (${pct}% of a core: $(ps -eo pcpu=,comm= --sort=-pcpu | head -3 | tr -s ' ' | tr '\n' ';')), waiting up to ${QUIET_MAX}s"
    waited=$(( waited + 2 ))
    [ "$waited" -ge "$QUIET_MAX" ] && { log "  machine still busy after ${QUIET_MAX}s: measuring anyway"; return 0; }
  done
}

# to_ms "1.23ms" | "456.00us" | "1.02s" -> milliseconds
to_ms() {
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.2f", n }'
}

# measure SERVER SCENARIO RUN "PIDS" WRK-ARGS... : one wrk run, repeated while contaminated.
# Appends a row to $OUT/runs.csv; fails, without a row, if the server (first PID) is gone.
measure() {
  local server=$1 scenario=$2 run=$3 pids=$4; shift 4
  local tag="${server}__${scenario}__run${run}" attempt=0 u0 k0 b0 u1 k1 b1 wu ws wall rps reqs p50 p99 errs
  local cpu_us srv_cores wrk_cores foreign sys_pct flag
  while :; do
    attempt=$(( attempt + 1 ))
    wait_quiet
    read -r u0 k0 < <(proc_ticks $pids); b0=$(busy_ticks)
    /usr/bin/time -f '%U %S %e' -o "$OUT/$tag.time" \
      wrk -t"$THREADS" -c"$CONNS" -d"${DUR}s" --latency "$@" > "$OUT/$tag.txt" 2>&1
    read -r u1 k1 < <(proc_ticks $pids); b1=$(busy_ticks)
    if ! kill -0 "${pids%% *}" 2>/dev/null; then
      log "  $tag: the server (pid ${pids%% *}) is gone: run discarded"
      mv "$OUT/$tag.txt" "$OUT/$tag.server-gone$attempt.txt"
      return 1
    fi
    read -r wu ws wall < "$OUT/$tag.time"
    rps=$(awk '/^Requests\/sec/ { print $2 }' "$OUT/$tag.txt")
    reqs=$(awk '/requests in/ { print $1 }' "$OUT/$tag.txt")
    p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$OUT/$tag.txt")")
    p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$OUT/$tag.txt")")
    errs=$(awk '/Non-2xx or 3xx/ { n += $NF } /Socket errors/ { for (i = 3; i <= NF; i++) n += $i + 0 } END { print n + 0 }' "$OUT/$tag.txt")
    read -r cpu_us srv_cores wrk_cores foreign sys_pct < <(awk -v u=$(( u1 - u0 )) -v k=$(( k1 - k0 )) \
      -v b=$(( b1 - b0 )) -v t="$TCK" -v wu="$wu" -v ws="$ws" -v d="$wall" -v n="${reqs:-0}" 'BEGIN {
        srv = (u + k) / t; wrk = wu + ws; f = (b / t - srv - wrk) / d; if (f < 0) f = 0
        printf "%.1f %.2f %.2f %.2f %.0f\n", (n > 0 ? srv * 1e6 / n : 0), srv / d, wrk / d, f, (u + k > 0 ? 100 * k / (u + k) : 0) }')
    flag=""
    awk -v f="$foreign" -v m="$FOREIGN_MAX" 'BEGIN { exit !(f > m) }' && flag="contaminated"
    [ "$errs" != 0 ] && flag="${flag:+$flag+}errors"
    log "  $tag: ${rps:-?} rps, p50 ${p50} ms, p99 ${p99} ms, server ${cpu_us} µs CPU/req (${srv_cores} cores, ${sys_pct}% in the kernel), wrk ${wrk_cores} cores, foreign ${foreign} cores${flag:+ [$flag]}"
    if [ "${flag#contaminated}" != "$flag" ] && [ "$attempt" -le "$RETRIES" ]; then
      mv "$OUT/$tag.txt" "$OUT/$tag.contaminated$attempt.txt"
      log "  repeating $tag (attempt $(( attempt + 1 )))"
      continue
    fi
    echo "$server,$scenario,$run,${rps:-0},$p50,$p99,$errs,$cpu_us,$srv_cores,$wrk_cores,$foreign,$flag,$sys_pct" >> "$OUT/runs.csv"
    return 0
  done
}

warm() { # warm SERVER SCENARIO WRK-ARGS...
  local server=$1 scenario=$2; shift 2
  wrk -t"$THREADS" -c"$CONNS" -d"${WARM}s" "$@" > "$OUT/${server}__${scenario}__warm.txt" 2>&1
}

peer_start() {
  if [ ! -d "$PEER_DIR/node_modules" ]; then
    log "no peer at $PEER_DIR: cp -r ../shared/bench/peer-node $PEER_DIR && (cd $PEER_DIR && npm ci), or PEER=0"
    return 1
  fi
  PEER_PORT=$(free_port)
  PEER_URL=http://127.0.0.1:$PEER_PORT
  (cd "$PEER_DIR" && exec env WORKERS=2 PORT="$PEER_PORT" node server-http.mjs) > "$OUT/peer.server.log" 2>&1 &
  PEER_PID=$!
  for _ in $(seq 150); do
    grep -q '^READY' "$OUT/peer.server.log" && break
    kill -0 "$PEER_PID" 2>/dev/null || { log "peer exited during start-up"; tail -20 "$OUT/peer.server.log" >&2; PEER_PID=""; return 1; }
    sleep 0.2
  done
  sleep 1
  PEER_PIDS=$(tree_pids "$PEER_PID")
  log "peer ready: node:http + jose, cluster of 2, pids $PEER_PIDS, $PEER_URL"
}

peer_stop() {
  [ -n "$PEER_PID" ] || return 0
  local pids
  pids=$(tree_pids "$PEER_PID")
  kill -TERM "$PEER_PID" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$PEER_PID" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$PEER_PID" 2>/dev/null && kill -KILL "$PEER_PID" 2>/dev/null
  wait "$PEER_PID" 2>/dev/null
  sleep 0.3
  local p
  for p in $pids; do
    if [ -r "/proc/$p/stat" ] && ! grep -q ') Z' "/proc/$p/stat" 2>/dev/null; then kill -KILL "$p" 2>/dev/null; fi
  done
  log "peer stopped (pids $pids)"
  PEER_PID=""
}

etag_of() { # URL -> the ETag header's value, quotes included
  curl -fsS -o /dev/null -D - "$1" | awk 'tolower($1) == "etag:" { print $2 }' | tr -d '\r'
}

record_env() {
  {
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "git: $(git -C "$KW_ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$KW_ROOT" diff --quiet HEAD 2>/dev/null || echo ' (work tree modified)')"
    echo "binary: $KEYWARD_BIN ($(stat -c '%y' "$KEYWARD_BIN" 2>/dev/null | cut -d. -f1))"
    echo "kernel: $(uname -r), nproc: $(nproc)"
    lscpu | grep -E 'Model name|^CPU\(s\)' | tr -s ' '
    echo "wrk: $(wrk -v 2>&1 | head -1)"
    echo "node: $(node --version 2>/dev/null)"
    echo "params: DUR=$DUR RUNS=$RUNS WARM=$WARM CONNS=$CONNS THREADS=$THREADS FOREIGN_MAX=$FOREIGN_MAX QUIET_PCT=$QUIET_PCT"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  } > "$OUT/env.txt" 2>&1
}

# Medians per server and scenario, Keyward beside the peer, as a markdown table.
summarize() {
  python3 - "$OUT/runs.csv" <<'PY'
import csv, statistics, sys
rows = list(csv.reader(open(sys.argv[1])))
cols = ["server", "scenario", "run", "rps", "p50", "p99", "errors", "cpu_us", "srv_cores", "wrk_cores", "foreign", "flag",
        "sys_pct"]
rows = [dict(zip(cols, r)) for r in rows]
scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
def med(server, scenario, key):
    xs = [float(r[key]) for r in rows if r["server"] == server and r["scenario"] == scenario]
    return statistics.median(xs) if xs else None
def flags(server, scenario):
    fs = sorted({f for r in rows if r["server"] == server and r["scenario"] == scenario for f in r["flag"].split("+") if f})
    return ",".join(fs)
def fmt(x, d=0):
    return "—" if x is None else f"{x:,.{d}f}"
print("| scenario | Keyward rps | peer rps | Keyward/peer | Keyward p99 ms | peer p99 ms | Keyward CPU µs/req | peer CPU µs/req | peer/Keyward CPU | runs | notes |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
for s in scenarios:
    k, p = med("keyward", s, "rps"), med("peer", s, "rps")
    kc, pc = med("keyward", s, "cpu_us"), med("peer", s, "cpu_us")
    n = sum(1 for r in rows if r["server"] == "keyward" and r["scenario"] == s)
    notes = "; ".join(f"{srv}: {f}" for srv in ("keyward", "peer") if (f := flags(srv, s)))
    ratio = f"{k / p:.2f}×" if k and p else "—"
    cratio = f"{pc / kc:.2f}×" if kc and pc else "—"
    print(f"| {s} | {fmt(k)} | {fmt(p)} | {ratio} | {fmt(med('keyward', s, 'p99'), 2)} | {fmt(med('peer', s, 'p99'), 2)} "
          f"| {fmt(kc, 1)} | {fmt(pc, 1)} | {cratio} | {n} | {notes} |")
PY
}
