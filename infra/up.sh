#!/usr/bin/env bash
# The stack behind `make up`, `make down`, `make logs`, `make wipe` and `make status`:
#
#   bash infra/up.sh [up|down|logs|wipe|status]
#
# With a Docker engine that answers, Docker Compose runs infra/docker-compose.yml (which also applies
# the CQL and registers the connector in one-shot services). Without one, the native stack
# (infra/native/stack.sh) runs the same services on loopback, and this script registers the connector.
# `up` records its choice in $STACK_DIR/mode (default .stack/mode); down, logs, wipe and status act on
# the recorded stack, so a Docker engine that appeared (or went away) since cannot send them elsewhere.
# STACK=compose or STACK=native forces a choice. Every action is idempotent.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

COMPOSE_FILE=infra/docker-compose.yml
NATIVE=infra/native/stack.sh
CONFIG=${CONFIG:-config/pipeline.yaml}
# The native stack keeps its state here too (stack.sh honours the same variable).
STACK_DIR=${STACK_DIR:-$ROOT/.stack}
MODE_FILE=$STACK_DIR/mode
if [[ -z ${PY:-} ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi

die() { echo "up.sh: error: $*" >&2; exit 1; }

action=${1:-up}
case $action in
  up | down | logs | wipe | status) ;;
  -h | --help | help)
    sed -n '2,12s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
    exit 0
    ;;
  *) die "unknown action '$action' (expected up, down, logs, wipe or status)" ;;
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

recorded() {
  local mode=""
  [[ -f $MODE_FILE ]] && mode=$(<"$MODE_FILE")
  case $mode in
    compose | native) echo "$mode" ;;
    "") ;;
    *) die "$MODE_FILE says '$mode' (expected compose or native): fix or delete it, or set STACK=" ;;
  esac
}

# The choice: STACK= first, then (except for `up`) what `up` recorded, then whether Docker answers.
why=""
case ${STACK:-auto} in
  compose | native) stack=$STACK why="STACK=$STACK" ;;
  auto)
    stack=""
    if [[ $action != up ]]; then
      stack=$(recorded)
      [[ -n $stack ]] && why="recorded by make up"
    fi
    if [[ -z $stack ]]; then
      if docker_answers; then stack=compose why="Docker engine answers"; else stack=native why="no Docker engine"; fi
    fi
    ;;
  *) die "STACK=${STACK}: expected compose, native or auto" ;;
esac

record() {
  mkdir -p "$STACK_DIR"
  echo "$stack" >"$MODE_FILE"
}

# After a wipe nothing is left to act on: the next `up` chooses afresh.
forget() {
  if [[ $(recorded) == "$stack" ]]; then rm -f "$MODE_FILE"; fi
  rmdir "$STACK_DIR" 2>/dev/null || true
}

if [[ $stack == compose ]]; then
  echo "stack: docker compose ($why)"
  if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
  elif command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
  else
    die "Docker Compose v2 is missing (install the docker-compose-plugin package), or run STACK=native"
  fi
  [[ $action == logs || $action == status ]] || load_env
  compose+=(-f "$COMPOSE_FILE" --env-file .env)
  case $action in
    # --wait: every service healthy, and the one-shot services (CQL, connector) finished with 0.
    up)
      record
      "${compose[@]}" up -d --build --wait --wait-timeout "${UP_TIMEOUT:-600}"
      ;;
    down) "${compose[@]}" down ;;
    logs) exec "${compose[@]}" logs -f --tail "${LOG_LINES:-100}" ;;
    wipe)
      "${compose[@]}" down --volumes --remove-orphans
      forget
      ;;
    status) exec "${compose[@]}" ps --all ;;
  esac
  exit 0
fi

echo "stack: native ($why)"
[[ -f $NATIVE ]] || die "$NATIVE is missing"
case $action in
  up)
    load_env
    record
    # Starts PostgreSQL (with infra/init-db.sql), Kafka, Cassandra (with infra/cassandra-init.cql)
    # and Connect, each only if it is not running yet.
    bash "$NATIVE" up
    "$PY" -m pipeline.connector --config "$CONFIG" register
    ;;
  down) bash "$NATIVE" down ;;
  logs) exec bash "$NATIVE" logs -f ;;
  wipe)
    bash "$NATIVE" wipe
    forget
    ;;
  status) exec bash "$NATIVE" status ;;
esac
