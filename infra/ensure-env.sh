#!/usr/bin/env bash
# Make sure FILE (default .env) holds every password the stack needs: a missing or empty one (as in a
# copy of .env.example) gets a random value, a set one is never changed. Runs on every `make install`, so
# a .env made before a new password was added (CASSANDRA_PASSWORD) gains it, and nothing else changes.
set -euo pipefail
file=${1:-.env}
umask 077
touch "$file"
[[ -s $file && -n $(tail -c1 "$file") ]] && echo >> "$file"   # no last newline: do not glue a line to it
random_value() { python3 -c 'import secrets; print(secrets.token_urlsafe(18))'; }   # [A-Za-z0-9_-]: safe in sed
for name in POSTGRES_PASSWORD PRODUCER_PASSWORD DEBEZIUM_PASSWORD CASSANDRA_PASSWORD; do
  if grep -qE "^[[:space:]]*$name=[[:space:]]*$" "$file"; then
    echo "$file: $name is empty: setting a random value"
    sed -i -E "s|^[[:space:]]*$name=[[:space:]]*$|$name=$(random_value)|" "$file"
  elif ! grep -qE "^[[:space:]]*$name=" "$file"; then
    echo "$file: adding $name with a random value (see .env.example)"
    echo "$name=$(random_value)" >> "$file"
  fi
done
touch "$file"   # newer than this script: make considers it up to date
