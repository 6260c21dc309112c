#!/usr/bin/env bash
# Make sure FILE (default .env) holds every password the stack needs: a missing one gets a random value,
# an existing one is never changed. Runs on every `make install`, so a .env made before a new password
# was added (CASSANDRA_PASSWORD) gains it, and nothing else changes.
set -euo pipefail
file=${1:-.env}
umask 077
touch "$file"
[[ -s $file && -n $(tail -c1 "$file") ]] && echo >> "$file"   # no last newline: do not glue a line to it
for name in POSTGRES_PASSWORD PRODUCER_PASSWORD DEBEZIUM_PASSWORD CASSANDRA_PASSWORD; do
  if ! grep -qE "^[[:space:]]*$name=" "$file"; then
    echo "$file: adding $name with a random value (see .env.example)"
    echo "$name=$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')" >> "$file"
  fi
done
touch "$file"   # newer than this script: make considers it up to date
