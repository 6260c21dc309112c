#!/usr/bin/env bash
# The benchmarks, on the running stack (make up). Each prints its figures; the README quotes them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

# The load benchmark writes a million real rows: give it a scratch database with the same schema,
# outside Debezium's publication slot, so the pipeline's own data and topics stay as they were.
scratch=binance_bench
export PGPASSWORD=$POSTGRES_PASSWORD
psql_admin() { psql -X -q -h 127.0.0.1 -p "${PGPORT:-5432}" -U postgres "$@"; }
if [[ -z $(psql_admin -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$scratch'") ]]; then
  psql_admin -d postgres -c "CREATE DATABASE $scratch"
fi
psql_admin -d "$scratch" -v ON_ERROR_STOP=1 -f infra/init-db.sql >/dev/null

echo "== producer load path: klines into PostgreSQL"
PIPELINE__POSTGRES__DBNAME=$scratch "$PY" bench/load_klines.py "$@"

echo "== consumer: decoding captured Debezium messages (no services)"
"$PY" bench/decode_micro.py
"$PY" bench/decode_micro.py --no-cache

if [[ -f bench/consumer_throughput.py ]]; then
  echo "== consumer: drain throughput, raw Cassandra ceiling, end-to-end latency"
  "$PY" bench/consumer_throughput.py
fi
