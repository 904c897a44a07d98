#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers at TEST_POSTGRES_URL (default
# postgres://postgres@127.0.0.1:5432, trust auth), installing and starting one where none does.
# Sourced by scripts/test.sh; safe to run on its own.
set -euo pipefail

: "${TEST_POSTGRES_URL:=postgres://postgres@127.0.0.1:5432}"
export TEST_POSTGRES_URL

pg_answers() {
  command -v psql >/dev/null 2>&1 && psql "$TEST_POSTGRES_URL/postgres" -Atqc 'select 1' >/dev/null 2>&1
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
    echo "PostgreSQL is needed for the tests and this user cannot install it; set TEST_POSTGRES_URL to a server" >&2
    return 1
  fi
}

start_cluster() {
  command -v pg_lsclusters >/dev/null 2>&1 || return 1
  local version
  version=$(pg_lsclusters -h 2>/dev/null | awk 'NR==1 {print $1}')
  if [ -z "$version" ]; then
    version=$(ls /usr/lib/postgresql | sort -n | tail -n 1)
    as_root pg_createcluster "$version" main >/dev/null
  fi
  # Local test server: trust connections from loopback, as the test URL expects.
  local hba="/etc/postgresql/$version/main/pg_hba.conf"
  if [ -f "$hba" ] && ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  fi
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null \
    || as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload 2>/dev/null || true
}

ensure_postgres() {
  if pg_answers; then return 0; fi
  echo "== PostgreSQL does not answer at $TEST_POSTGRES_URL: starting one" >&2
  if ! command -v pg_lsclusters >/dev/null 2>&1; then
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql >/dev/null
  fi
  start_cluster || true
  for _ in $(seq 1 60); do
    if pg_answers; then return 0; fi
    sleep 1
  done
  echo "PostgreSQL still does not answer at $TEST_POSTGRES_URL" >&2
  return 1
}

# Databases left by earlier runs (each test makes its own) are dropped before a new run.
drop_old_test_databases() {
  psql "$TEST_POSTGRES_URL/postgres" -Atqc \
    "select datname from pg_database where datname like 'tributary_test_%'" 2>/dev/null |
    while read -r name; do
      psql "$TEST_POSTGRES_URL/postgres" -qc "drop database if exists \"$name\"" >/dev/null 2>&1 || true
    done
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  ensure_postgres
fi
