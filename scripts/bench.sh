#!/usr/bin/env bash
# The benchmark suite: `scripts/bench.sh` (full, about 10 minutes once built) or
# `scripts/bench.sh --quick` (under 2 minutes once built; a cold release build, optimised at
# link time, takes about 14 more). Installs what it needs (oha from crates.io, the peer gateway
# from the npm registry, PostgreSQL if none answers), builds the release binaries, runs the
# criterion benches, then tributary-bench, which writes bench/results/results.{md,json}.
# Other flags go to tributary-bench: --no-postgres, --no-peer, --out DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=false
for arg in "$@"; do [[ "$arg" == "--quick" ]] && quick=true; done

if ! command -v oha >/dev/null; then
  echo "installing oha (the load generator) from crates.io" >&2
  cargo install oha --locked --version 1.16.0
fi
if ! command -v valgrind >/dev/null && ! $quick; then
  # The hub's instructions a query (callgrind); without valgrind the report says not measured.
  if command -v apt-get >/dev/null; then
    echo "installing valgrind (instruction counts) from Debian's packages" >&2
    (apt-get update -qq && apt-get install -y -qq valgrind) >&2 ||
      echo "valgrind could not be installed: the instruction count will be skipped" >&2
  else
    echo "valgrind is not installed: the instruction count will be skipped" >&2
  fi
fi
# shellcheck source=scripts/postgres.sh
source scripts/postgres.sh
ensure_postgres
# The tests' leftover databases (each test makes one) would each wake an autovacuum worker
# once a minute: with dozens, one every second or two, on the cores the benchmark measures.
drop_old_test_databases
if command -v npm >/dev/null; then
  if [[ ! -d bench/peer/node_modules ]] || [[ bench/peer/package-lock.json -nt bench/peer/node_modules ]]; then
    (cd bench/peer && npm ci --no-audit --no-fund --loglevel=error)
  fi
else
  echo "npm is not installed: the peer comparison will be skipped" >&2
fi

cargo build --release --locked -p tributary-api -p tributary-bench
if $quick; then
  cargo bench --locked -p tributary-bench --bench inprocess -- --warm-up-time 1 --measurement-time 2
else
  cargo bench --locked -p tributary-bench --bench inprocess
fi
exec target/release/tributary-bench "$@"
