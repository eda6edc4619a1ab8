#!/usr/bin/env bash
# Keyward's one test command: scripts/test.sh [extra test-runner args...]
#
# Makes sure the services the tests need are up (PostgreSQL on 127.0.0.1:5432,
# Redis on 127.0.0.1:6379, the redis-server binary on PATH), then runs, stopping
# at the first failure:
#   cargo fmt --check  ->  cargo clippy -D warnings  ->  cargo nextest run
# (cargo test when cargo-nextest is not installed). Extra arguments go to the
# test runner, e.g.  scripts/test.sh -E 'test(jwks)'
#
# Written for a fresh Debian 12 machine where only the Rust toolchain is
# present: missing PostgreSQL/Redis are installed with apt-get (root only).
#
# Environment:
#   KEYWARD_TEST_PG_URL        admin connection the tests use to create one
#                              database per test
#                              (default postgres://postgres@127.0.0.1:5432/postgres;
#                              set to anything else, the local PostgreSQL is not
#                              set up, the given server only checked)
#   KEYWARD_TEST_REDIS_URL     (default redis://127.0.0.1:6379; same rule, but
#                              the redis-server binary is always required)
#   KEYWARD_SKIP_LINT=1        skip fmt and clippy (quick local iterations)
#   KEYWARD_TEST_SERVICES_ONLY=1  stop once the services are up (handy before
#                              running cargo by hand)
set -euo pipefail

# Work from the repository root whatever the caller's directory.
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

readonly PG_DEFAULT_URL=postgres://postgres@127.0.0.1:5432/postgres
readonly REDIS_DEFAULT_URL=redis://127.0.0.1:6379
readonly WAIT_SECONDS=30

# rustup installs into ~/.cargo/bin, which non-login shells (CI, sudo) often
# lack on PATH.
if ! command -v cargo >/dev/null 2>&1 && [[ -x "${HOME:-/root}/.cargo/bin/cargo" ]]; then
    export PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi

# wait_for SECONDS DESCRIPTION COMMAND...: retry COMMAND once a second, bounded.
wait_for() {
    local seconds=$1 what=$2 i
    shift 2
    for ((i = 0; i < seconds; i++)); do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 1
    done
    printf 'error: %s not ready after %ss\n' "$what" "$seconds" >&2
    return 1
}

# apt_install PACKAGE...: installs from the Debian archive. Only root may do
# this; everyone else gets told what is missing instead of a sudo prompt.
APT_UPDATED=0
apt_install() {
    if [[ $(id -u) -ne 0 ]]; then
        die "missing $*; install it (e.g. sudo apt-get install -y $*) or run this script as root"
    fi
    command -v apt-get >/dev/null 2>&1 || die "missing $* and apt-get is not available; install it by hand"
    info "installing $* with apt-get"
    if [[ $APT_UPDATED -eq 0 ]]; then
        apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# ---------------------------------------------------------------- PostgreSQL

pg_ready() { pg_isready -q -h 127.0.0.1 -p 5432; }

# "Installed" means the Debian cluster tools, a server binary and the client
# tools this script uses are all present.
pg_installed() {
    command -v pg_ctlcluster >/dev/null 2>&1 &&
        command -v pg_isready >/dev/null 2>&1 &&
        command -v psql >/dev/null 2>&1 &&
        { command -v postgres >/dev/null 2>&1 || compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; }
}

# Highest-numbered version that has a cluster configured (empty if none).
pg_cluster_version() {
    if [[ -d /etc/postgresql ]]; then
        find /etc/postgresql -mindepth 2 -maxdepth 2 -type d -name main -printf '%P\n' 2>/dev/null |
            cut -d/ -f1 | sort -V | tail -n 1
    fi
}

# Only ever called for a cluster this script has just installed or created:
# let local TCP connections in without a password (tests connect as
# postgres@127.0.0.1 with no password). pg_hba.conf is first-match, so the
# lines go on top. Never done to a cluster that existed before the run.
pg_trust_loopback() {
    local hba="/etc/postgresql/$1/main/pg_hba.conf"
    [[ -f $hba ]] || die "expected $hba after installing PostgreSQL"
    if ! grep -q '^host[[:space:]]\+all[[:space:]]\+all[[:space:]]\+127\.0\.0\.1/32[[:space:]]\+trust' "$hba"; then
        info "allowing trust auth on loopback in $hba (fresh cluster)"
        local tmp
        tmp=$(mktemp)
        {
            echo '# Added by keyward scripts/test.sh: fresh CI cluster, trust on loopback.'
            echo 'host    all             all             127.0.0.1/32            trust'
            echo 'host    all             all             ::1/128                 trust'
            cat "$hba"
        } >"$tmp"
        # cat > keeps the file's owner and mode (postgres:postgres 0640).
        cat "$tmp" >"$hba"
        rm -f "$tmp"
    fi
}

ensure_postgres() {
    step "PostgreSQL"
    if [[ ${KEYWARD_TEST_PG_URL:-$PG_DEFAULT_URL} != "$PG_DEFAULT_URL" ]]; then
        # The caller chose another server; it is theirs to run. Just check it.
        info "KEYWARD_TEST_PG_URL points elsewhere; not setting up a local server"
        if command -v psql >/dev/null 2>&1; then
            wait_for "$WAIT_SECONDS" "PostgreSQL at KEYWARD_TEST_PG_URL" \
                psql "$KEYWARD_TEST_PG_URL" -w -Atc 'SELECT 1' ||
                die "cannot connect to KEYWARD_TEST_PG_URL"
        else
            info "psql not installed; cannot check KEYWARD_TEST_PG_URL beforehand"
        fi
        return 0
    fi

    local fresh=0 ver before
    if command -v pg_isready >/dev/null 2>&1 && pg_ready; then
        info "already running at 127.0.0.1:5432"
    else
        before=$(pg_cluster_version)
        if ! pg_installed; then
            apt_install postgresql
        fi
        ver=$(pg_cluster_version)
        # A cluster that appeared with the install is ours to configure; one
        # that was configured before (even if the package was removed) is not.
        if [[ -n $ver && $ver != "$before" ]]; then
            fresh=1
        fi
        if [[ -z $ver ]]; then
            # Installed without a cluster (e.g. create_main_cluster = false).
            [[ $(id -u) -eq 0 ]] || die "PostgreSQL has no cluster; run: sudo pg_createcluster <version> main --start"
            ver=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)
            [[ -n $ver ]] || die "PostgreSQL is installed but no server version found under /usr/lib/postgresql"
            info "creating cluster $ver/main on port 5432"
            pg_createcluster --port 5432 "$ver" main >/dev/null
            fresh=1
        fi
        if [[ $fresh -eq 1 ]]; then
            pg_trust_loopback "$ver"
        fi
        # The package's postinst may already have started the server (with the
        # stock pg_hba.conf): reload it so the trust lines apply; otherwise start.
        # --skip-systemctl-redirect: no systemd in containers/CI.
        if pg_ready; then
            info "reloading cluster $ver/main"
            pg_ctlcluster --skip-systemctl-redirect "$ver" main reload
        else
            info "starting cluster $ver/main"
            pg_ctlcluster --skip-systemctl-redirect "$ver" main start ||
                die "could not start PostgreSQL cluster $ver/main (see /var/log/postgresql/postgresql-$ver-main.log)"
        fi
        if ! wait_for "$WAIT_SECONDS" "PostgreSQL at 127.0.0.1:5432" pg_ready; then
            pg_lsclusters >&2 || true
            die "PostgreSQL did not come up on 127.0.0.1:5432"
        fi
    fi

    # The tests log in as postgres without a password. An existing cluster's
    # config is the owner's business, so only explain what is needed.
    psql -h 127.0.0.1 -p 5432 -U postgres -w -Atc 'SELECT 1' postgres >/dev/null ||
        die "PostgreSQL at 127.0.0.1:5432 refuses user postgres without a password;
       add 'host all postgres 127.0.0.1/32 trust' to the top of its pg_hba.conf
       and reload it, or point KEYWARD_TEST_PG_URL at a server that works"
    info "$(psql -h 127.0.0.1 -p 5432 -U postgres -w -Atc 'SHOW server_version' postgres | sed 's/^/server /')"
}

# --------------------------------------------------------------------- Redis

redis_ready() { [[ $(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null) == PONG ]]; }

# Debian's redis-server package brings redis-cli (redis-tools) along.
redis_installed() {
    command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1
}

# usable_dir DIR: DIR exists (created if need be) and we can write to it.
usable_dir() { mkdir -p "$1" 2>/dev/null && [[ -d $1 && -w $1 ]]; }

ensure_redis() {
    step "Redis"
    # Needed in every case: the tests spawn private redis-server processes on
    # free ports.
    if ! redis_installed; then
        apt_install redis-server
    fi
    command -v redis-server >/dev/null 2>&1 || die "redis-server is not on PATH"

    if [[ ${KEYWARD_TEST_REDIS_URL:-$REDIS_DEFAULT_URL} != "$REDIS_DEFAULT_URL" ]]; then
        info "KEYWARD_TEST_REDIS_URL points elsewhere; not setting up a local server"
        wait_for "$WAIT_SECONDS" "Redis at KEYWARD_TEST_REDIS_URL" \
            bash -c '[[ $(redis-cli -u "$1" ping 2>/dev/null) == PONG ]]' _ "$KEYWARD_TEST_REDIS_URL" ||
            die "no PONG from KEYWARD_TEST_REDIS_URL"
        return 0
    fi

    if redis_ready; then
        info "already running at 127.0.0.1:6379"
    else
        # Throwaway CI instance: no persistence, loopback only ("-::1": bind
        # IPv6 loopback only if the machine has it).
        local dir=/var/lib/redis logfile=/var/log/redis/ci.log
        if ! usable_dir /var/lib/redis || ! usable_dir /var/log/redis; then
            dir=/tmp
            logfile=/tmp/keyward-ci-redis.log
        fi
        info "starting redis-server on 127.0.0.1:6379 (dir $dir, log $logfile)"
        # --daemonize returns as soon as it forks; failures (port taken, ...)
        # only show in the log, hence the bounded wait below.
        redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 \
            --save "" --appendonly no --dir "$dir" --logfile "$logfile" ||
            die "redis-server refused to start"
        if ! wait_for "$WAIT_SECONDS" "Redis at 127.0.0.1:6379" redis_ready; then
            tail -n 20 "$logfile" >&2 2>/dev/null || true
            die "Redis did not come up on 127.0.0.1:6379"
        fi
    fi
    info "$(redis-server --version)"
}

# ---------------------------------------------------------------- Rust tools

# Minimal rustup profiles lack rustfmt/clippy; adding them is quick.
ensure_component() {
    local sub=$1 component=$2
    if ! cargo "$sub" --version >/dev/null 2>&1; then
        command -v rustup >/dev/null 2>&1 || die "cargo $sub is missing and rustup is not available"
        info "installing rustup component $component"
        rustup component add "$component"
    fi
}

# Called on EXIT once the tests have started. The tests drop their own
# databases; this catches those left by a crashed or interrupted test (or an
# earlier run). Never changes the run's exit status.
# Caveat: a second test run going on at the same time against the same server
# would lose its databases too.
cleanup_databases() {
    local rc=$? dbs
    set +e
    if command -v psql >/dev/null 2>&1; then
        dbs=$(psql "$KEYWARD_TEST_PG_URL" -w -Atc \
            "SELECT datname FROM pg_database WHERE datname LIKE 'keyward\_test\_%'" 2>/dev/null)
        if [[ -n $dbs ]]; then
            step "dropping leftover test databases"
            sed 's/^/    /' <<<"$dbs"
            # \gexec runs each generated DROP on its own (DROP DATABASE cannot
            # run inside a transaction); %I quotes the name safely. psql has
            # to read this from stdin: -c does not mix SQL and \gexec.
            psql "$KEYWARD_TEST_PG_URL" -w -Atq >/dev/null 2>&1 <<'SQL' || info "(could not drop all of them)"
SELECT format('DROP DATABASE IF EXISTS %I WITH (FORCE)', datname)
FROM pg_database WHERE datname LIKE 'keyward\_test\_%' \gexec
SQL
        fi
    fi
    exit "$rc"
}

# ---------------------------------------------------------------------- main

# Fail before any apt-get work if the one real prerequisite is missing.
if [[ ${KEYWARD_TEST_SERVICES_ONLY:-0} != 1 ]]; then
    command -v cargo >/dev/null 2>&1 || die "cargo not found; install the Rust toolchain (https://rustup.rs)"
fi

ensure_postgres
ensure_redis

export KEYWARD_TEST_PG_URL="${KEYWARD_TEST_PG_URL:-$PG_DEFAULT_URL}"
export KEYWARD_TEST_REDIS_URL="${KEYWARD_TEST_REDIS_URL:-$REDIS_DEFAULT_URL}"
info "KEYWARD_TEST_PG_URL=$KEYWARD_TEST_PG_URL"
info "KEYWARD_TEST_REDIS_URL=$KEYWARD_TEST_REDIS_URL"

if [[ ${KEYWARD_TEST_SERVICES_ONLY:-0} == 1 ]]; then
    step "services ready (KEYWARD_TEST_SERVICES_ONLY=1, not running cargo)"
    exit 0
fi

if [[ ${KEYWARD_SKIP_LINT:-0} == 1 ]]; then
    step "skipping fmt and clippy (KEYWARD_SKIP_LINT=1)"
else
    step "cargo fmt --check"
    ensure_component fmt rustfmt
    cargo fmt --all -- --check

    step "cargo clippy"
    ensure_component clippy clippy
    cargo clippy --all-targets --locked -- -D warnings
fi

trap cleanup_databases EXIT
# Prefer nextest (process per test, clearer report); don't fetch it from the
# network, cargo test runs the same tests.
if cargo nextest --version >/dev/null 2>&1; then
    step "cargo nextest run"
    cargo nextest run --locked --no-fail-fast "$@"
else
    step "cargo test (cargo-nextest not installed)"
    if [[ $# -gt 0 ]]; then
        info "note: arguments are passed to cargo test as-is; nextest-only options such as -E will not work"
    fi
    cargo test --locked --no-fail-fast "$@"
fi
