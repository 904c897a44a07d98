#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, and the end-to-end tests against the real
# server on SQLite and on PostgreSQL (started here if none answers).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/postgres.sh
source scripts/postgres.sh
ensure_postgres
drop_old_test_databases
cargo test --workspace --all-targets --locked "$@"
