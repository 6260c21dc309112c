#!/usr/bin/env bash
# The stack behind `make up`, `make down`, `make logs` and `make wipe`:
#
#   bash infra/up.sh [up|down|logs|wipe]
#
# With a Docker engine that answers, Docker Compose runs infra/docker-compose.yml (which also applies
# the CQL and registers the connector in one-shot services). Without one, the native stack
# (infra/native/stack.sh) runs the same services on loopback, and this script registers the connector.
# STACK=compose or STACK=native forces a choice. Every action is idempotent.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

COMPOSE_FILE=infra/docker-compose.yml
NATIVE=infra/native/stack.sh
CONFIG=${CONFIG:-config/pipeline.yaml}
if [[ -z ${PY:-} ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi

die() { echo "up.sh: error: $*" >&2; exit 1; }

action=${1:-up}
case $action in
  up | down | logs | wipe) ;;
  -h | --help | help)
    sed -n '2,9s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
    exit 0
    ;;
  *) die "unknown action '$action' (expected up, down, logs or wipe)" ;;
esac

# The passwords: `make` exports .env; a bare `bash infra/up.sh` reads it here.
load_env() {
  [[ -f .env ]] || die ".env is missing: run 'make install' (it creates one with random passwords)"
  local name
  for name in POSTGRES_PASSWORD PRODUCER_PASSWORD DEBEZIUM_PASSWORD; do
    if [[ -z ${!name:-} ]]; then
      set -a
      # shellcheck disable=SC1091
      . ./.env
      set +a
      break
    fi
  done
}

docker_answers() {
  command -v docker >/dev/null 2>&1 && timeout 20 docker info >/dev/null 2>&1
}

case ${STACK:-auto} in
  compose) stack=compose ;;
  native) stack=native ;;
  auto) if docker_answers; then stack=compose; else stack=native; fi ;;
  *) die "STACK=${STACK}: expected compose, native or auto" ;;
esac

if [[ $stack == compose ]]; then
  echo "stack: docker compose"
  if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
  elif command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
  else
    die "the Docker engine answers but Docker Compose v2 is missing (install the docker-compose-plugin package), or run STACK=native"
  fi
  [[ $action == logs ]] || load_env
  compose+=(-f "$COMPOSE_FILE" --env-file .env)
  case $action in
    # --wait: every service healthy, and the one-shot services (CQL, connector) finished with 0.
    up) "${compose[@]}" up -d --build --wait --wait-timeout "${UP_TIMEOUT:-600}" ;;
    down) "${compose[@]}" down ;;
    logs) exec "${compose[@]}" logs -f --tail "${LOG_LINES:-100}" ;;
    wipe) "${compose[@]}" down --volumes --remove-orphans ;;
  esac
  exit 0
fi

echo "stack: native (no Docker engine)"
[[ -f $NATIVE ]] || die "$NATIVE is missing"
case $action in
  up)
    load_env
    # Starts PostgreSQL (with infra/init-db.sql), Kafka, Cassandra (with infra/cassandra-init.cql)
    # and Connect, each only if it is not running yet.
    bash "$NATIVE" up
    "$PY" -m pipeline.connector --config "$CONFIG" register
    ;;
  down) bash "$NATIVE" down ;;
  logs) exec bash "$NATIVE" logs -f ;;
  wipe) bash "$NATIVE" wipe ;;
esac
