#!/usr/bin/env bash
# The CDC stack without Docker, every service on loopback:
#   pg         PostgreSQL (a Debian cluster, default 15/cdc) on 5432
#   kafka      Kafka broker+controller (KRaft) on 9092, controller 9093
#   connect    Kafka Connect (distributed) with Debezium's PostgreSQL plugin on 8083
#   cassandra  Cassandra 5.0, CQL on 9042 (gossip on 7000)
#
# Usage: stack.sh up|down|status|wipe [service...]
#        stack.sh logs [-f] [service...]
# Runtime state (data, logs, pids, rendered configs) lives in $STACK_DIR
# (default <repo>/.stack); jars in infra/native/lib, fetched by Maven.
set -euo pipefail

NATIVE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$NATIVE_DIR/../.." && pwd)
STACK_DIR=${STACK_DIR:-$REPO_DIR/.stack}
LIB_DIR=${NATIVE_LIB_DIR:-$NATIVE_DIR/lib}
DATA=$STACK_DIR/data
LOGS=$STACK_DIR/logs
RUN=$STACK_DIR/run
CONF=$STACK_DIR/conf

PG_CLUSTER=${PG_CLUSTER:-cdc}
PG_PORT=5432
PG_DB=${PG_DB:-binance}
PG_CONF_FILE=${PG_CONF_FILE:-$REPO_DIR/infra/postgresql.conf}
PG_INIT_SQL=${PG_INIT_SQL:-$REPO_DIR/infra/init-db.sql}
CASSANDRA_INIT_CQL=${CASSANDRA_INIT_CQL:-$REPO_DIR/infra/cassandra-init.cql}
KAFKA_HEAP=${KAFKA_HEAP:-512m}
CONNECT_HEAP=${CONNECT_HEAP:-1g}
CASSANDRA_HEAP=${CASSANDRA_HEAP:-1g}
READY_TIMEOUT=${READY_TIMEOUT:-180}
STOP_TIMEOUT=${STOP_TIMEOUT:-60}
PYTHON=${PYTHON:-python3}

ALL_SERVICES=(pg kafka cassandra connect)
declare -A PORTS=([pg]="$PG_PORT" [kafka]="9092 9093" [connect]=8083 [cassandra]="9042 7000")

say() { echo "stack: $*"; }
die() { echo "stack: error: $*" >&2; exit 1; }

# ---------------------------------------------------------------- helpers

as_root() { if [[ $EUID -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# psql and friends as the cluster owner, over the Unix socket (peer auth).
# cd / because postgres may not be allowed into the caller's directory.
as_postgres() {
  (cd / && as_root runuser -u postgres -- "$@")
}

port_busy() {
  if command -v ss >/dev/null; then
    [[ -n $(ss -Hltn "sport = :$1" 2>/dev/null) ]]
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}

port_owner() {
  local owner=""
  command -v ss >/dev/null && owner=$(ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'users:(.*)' | head -n1 || true)
  echo "${owner:-another process}"
}

check_ports() {
  local svc=$1 port
  for port in ${PORTS[$svc]}; do
    port_busy "$port" && die "port $port (needed by $svc) is already in use by $(port_owner "$port")"
  done
  return 0
}

# The pid file alone could name a recycled pid; the JVM's command line carries a marker.
svc_pid() {
  local file=$RUN/$1.pid pid cmd
  [[ -f $file ]] || return 1
  pid=$(<"$file")
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $cmd == *"-Dnative.stack.service=$1 "* ]] || return 1
  echo "$pid"
}

java_major() {
  local v
  v=$("$1" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
  [[ $v == 1.* ]] && v=${v#1.}
  echo "${v:-0}"
}

find_java() {
  JAVA=${JAVA_HOME:+$JAVA_HOME/bin/java}
  JAVA=${JAVA:-$(command -v java || true)}
  [[ -n $JAVA && -x $JAVA ]] || die "java not found: install a JDK 17 (apt-get install -y openjdk-17-jdk-headless) or set JAVA_HOME"
  local major
  major=$(java_major "$JAVA")
  ((major >= 17)) || die "$JAVA is Java $major; Kafka 4 needs 17 or newer (set JAVA_HOME)"
  # Cassandra 5.0 runs on JDK 11 or 17 only.
  CASSANDRA_JAVA=${CASSANDRA_JAVA_HOME:+$CASSANDRA_JAVA_HOME/bin/java}
  CASSANDRA_JAVA=${CASSANDRA_JAVA:-$JAVA}
  major=$(java_major "$CASSANDRA_JAVA")
  [[ $major == 17 || $major == 11 ]] || die "$CASSANDRA_JAVA is Java $major; Cassandra 5.0 needs Java 17 (set CASSANDRA_JAVA_HOME)"
}

# Maven copies the jars out of ~/.m2 (downloading only what is missing there).
# A stamp of the poms skips Maven entirely while they are unchanged.
fetch_jars() {
  local stamp=$LIB_DIR/.stamp want
  want=$(cat "$NATIVE_DIR/pom.xml" "$NATIVE_DIR"/maven/*/pom.xml | sha256sum | cut -d' ' -f1)
  [[ -f $stamp && $(<"$stamp") == "$want" ]] && return 0
  command -v mvn >/dev/null || die "mvn not found: apt-get install -y maven"
  say "fetching jars with Maven into $LIB_DIR"
  # Start clean so a version bump never leaves two versions of a jar on a classpath.
  rm -rf "$LIB_DIR"
  mkdir -p "$LIB_DIR" "$LOGS"
  if ! mvn -B -q -f "$NATIVE_DIR/pom.xml" package -Dnative.lib="$LIB_DIR" >"$LOGS/maven.log" 2>&1; then
    tail -n 20 "$LOGS/maven.log" >&2
    die "Maven failed to fetch the jars (is Maven Central reachable? full log: $LOGS/maven.log)"
  fi
  echo "$want" >"$stamp"
}

render() {
  sed -e "s#@DATA@#$DATA#g" -e "s#@PLUGINS@#$LIB_DIR/plugins#g" "$NATIVE_DIR/conf/$1" >"$CONF/$1"
}

# setsid: the service must outlive the shell (and a Ctrl-C) that started it.
# The inner bash writes its own pid, then becomes the JVM, so the pid file is exact.
launch() {
  local svc=$1
  shift
  rm -f "$RUN/$svc.pid"
  echo "=== $(date -Is) stack.sh starting $svc" >>"$LOGS/$svc.log"
  (cd "$STACK_DIR" && exec setsid bash -c 'echo $$ >"$0"; exec "$@"' "$RUN/$svc.pid" "$@" \
    >>"$LOGS/$svc.log" 2>&1 </dev/null) &
  local i
  for i in {1..50}; do
    [[ -s $RUN/$svc.pid ]] && return 0
    sleep 0.1
  done
  fail "$svc" "did not start"
}

fail() {
  local svc=$1 log
  shift
  log=$(log_file "$svc")
  echo "stack: error: $svc $*" >&2
  if [[ -r $log ]]; then
    echo "--- last 30 lines of $log" >&2
    tail -n 30 "$log" >&2
  fi
  exit 1
}

log_file() {
  if [[ $1 == pg ]]; then echo "/var/log/postgresql/postgresql-$PG_VERSION-$PG_CLUSTER.log"; else echo "$LOGS/$1.log"; fi
}

ready() {
  case $1 in
    pg) pg_isready -q -h 127.0.0.1 -p "$PG_PORT" ;;
    kafka) "$PYTHON" "$NATIVE_DIR/probe.py" kafka 127.0.0.1:9092 ;;
    connect) "$PYTHON" "$NATIVE_DIR/probe.py" connect 127.0.0.1:8083 ;;
    cassandra) "$PYTHON" "$NATIVE_DIR/probe.py" cql 127.0.0.1:9042 ;;
  esac
}

running() {
  if [[ $1 == pg ]]; then pg_online; else svc_pid "$1" >/dev/null; fi
}

wait_ready() {
  local svc=$1 deadline=$((SECONDS + READY_TIMEOUT))
  until ready "$svc" >/dev/null 2>&1; do
    running "$svc" || fail "$svc" "exited during startup"
    ((SECONDS < deadline)) || fail "$svc" "not ready after ${READY_TIMEOUT}s"
    sleep 1
  done
}

# ---------------------------------------------------------------- postgres

# Newest installed server unless PG_VERSION says otherwise.
pg_version() {
  PG_VERSION=${PG_VERSION:-$(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -n1)}
}

pg_detect() {
  pg_version
  command -v pg_createcluster >/dev/null && [[ -x /usr/lib/postgresql/$PG_VERSION/bin/postgres ]] ||
    die "PostgreSQL server not installed: apt-get install -y postgresql"
}

pg_exists() { [[ -n $PG_VERSION && -d /etc/postgresql/$PG_VERSION/$PG_CLUSTER ]]; }

pg_online() {
  pg_exists && pg_lsclusters -h | awk -v v="$PG_VERSION" -v c="$PG_CLUSTER" '$1 == v && $2 == c && $4 ~ /^online/ {f = 1} END {exit !f}'
}

# Another Debian cluster (typically 15/main) serving our port.
pg_conflicts() {
  pg_lsclusters -h | awk -v p="$PG_PORT" -v me="$PG_VERSION/$PG_CLUSTER" '$3 == p && $4 ~ /^online/ && $1 "/" $2 != me {print $1 "/" $2}'
}

pg_configure() {
  local confd=/etc/postgresql/$PG_VERSION/$PG_CLUSTER/conf.d
  if [[ -f $PG_CONF_FILE ]]; then
    as_root install -m 644 -o postgres -g postgres "$PG_CONF_FILE" "$confd/10-infra.conf"
  else
    say "warning: $PG_CONF_FILE not found; using the logical-replication minimum"
    printf "wal_level = logical\nmax_replication_slots = 4\nmax_wal_senders = 4\n" |
      as_root tee "$confd/10-infra.conf" >/dev/null
  fi
  # Included after the infra settings, so these win: loopback only for the native stack.
  printf "listen_addresses = 'localhost'\nport = %s\n" "$PG_PORT" | as_root tee "$confd/90-native.conf" >/dev/null
}

start_pg() {
  pg_detect
  if ! pg_exists; then
    say "creating PostgreSQL cluster $PG_VERSION/$PG_CLUSTER"
    as_root pg_createcluster --start-conf=manual -p "$PG_PORT" "$PG_VERSION" "$PG_CLUSTER" >/dev/null
  fi
  pg_configure
  if pg_online; then
    say "pg already running"
  else
    local other
    for other in $(pg_conflicts); do
      if [[ ${NATIVE_STOP_CONFLICTING_PG:-0} == 1 ]]; then
        say "stopping PostgreSQL cluster $other, which holds port $PG_PORT"
        as_root pg_ctlcluster "${other%/*}" "${other#*/}" stop
      else
        die "port $PG_PORT is held by PostgreSQL cluster $other: stop it (pg_ctlcluster ${other%/*} ${other#*/} stop) or rerun with NATIVE_STOP_CONFLICTING_PG=1"
      fi
    done
    check_ports pg
    as_root pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start || fail pg "failed to start"
  fi
  wait_ready pg
  pg_init_db
}

# init-db.sql runs once: when it creates the database. It runs in one
# transaction, and a failure drops the database again so the next `up` retries.
pg_init_db() {
  local exists
  exists=$(as_postgres psql -X -p "$PG_PORT" -tAc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")
  [[ $exists == 1 ]] && return 0
  if [[ ! -f $PG_INIT_SQL ]]; then
    say "warning: $PG_INIT_SQL not found; database $PG_DB not created"
    return 0
  fi
  say "creating database $PG_DB and running $(basename "$PG_INIT_SQL")"
  as_postgres createdb -p "$PG_PORT" "$PG_DB"
  if ! as_postgres env DEBEZIUM_PASSWORD="${DEBEZIUM_PASSWORD:-debezium}" PRODUCER_PASSWORD="${PRODUCER_PASSWORD:-producer}" \
    psql -X -q -p "$PG_PORT" -d "$PG_DB" -v ON_ERROR_STOP=1 --single-transaction -f - \
    <"$PG_INIT_SQL" >"$LOGS/pg-init.log" 2>&1; then
    as_postgres dropdb -p "$PG_PORT" "$PG_DB"
    cat "$LOGS/pg-init.log" >&2
    die "$PG_INIT_SQL failed; database $PG_DB dropped again"
  fi
}

stop_pg() {
  pg_version
  if pg_online; then
    as_root pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" stop -m fast
    say "pg stopped"
  fi
}

# ---------------------------------------------------------------- JVM services

start_kafka() {
  render kafka.properties
  render log4j2.properties
  if [[ ! -f $DATA/kafka/meta.properties ]]; then
    local cluster_id
    cluster_id=$("$PYTHON" -c 'import base64, uuid; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')
    "$JAVA" -Dlog4j2.configurationFile="$CONF/log4j2.properties" -cp "$LIB_DIR/kafka/*" \
      kafka.tools.StorageTool format -t "$cluster_id" -c "$CONF/kafka.properties" >>"$LOGS/kafka.log" 2>&1 ||
      fail kafka "storage format failed"
  fi
  launch kafka "$JAVA" -Dnative.stack.service=kafka -Xms"$KAFKA_HEAP" -Xmx"$KAFKA_HEAP" \
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$CONF/log4j2.properties" \
    -cp "$LIB_DIR/kafka/*" kafka.Kafka "$CONF/kafka.properties"
}

start_connect() {
  render connect-distributed.properties
  render log4j2.properties
  launch connect "$JAVA" -Dnative.stack.service=connect -Xms256m -Xmx"$CONNECT_HEAP" \
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$CONF/log4j2.properties" \
    -cp "$LIB_DIR/connect/*" org.apache.kafka.connect.cli.ConnectDistributed "$CONF/connect-distributed.properties"
}

start_cassandra() {
  render cassandra.yaml
  cp "$NATIVE_DIR/conf/logback.xml" "$CONF/logback.xml"
  mkdir -p "$DATA"/cassandra/{data,commitlog,saved_caches,hints,cdc_raw} "$CONF/cassandra-triggers"
  local jamm opts
  jamm=$(compgen -G "$LIB_DIR/cassandra/jamm-*.jar" | head -n1) || die "jamm jar missing from $LIB_DIR/cassandra"
  mapfile -t opts < <(grep -E '^-' "$NATIVE_DIR/conf/cassandra-jvm.options")
  launch cassandra "$CASSANDRA_JAVA" -Dnative.stack.service=cassandra -Xms"$CASSANDRA_HEAP" -Xmx"$CASSANDRA_HEAP" \
    "${opts[@]}" -javaagent:"$jamm" \
    -Dcassandra.config="file://$CONF/cassandra.yaml" \
    -Dlogback.configurationFile="$CONF/logback.xml" \
    -Dcassandra.logdir="$LOGS" -Dcassandra.storagedir="$DATA/cassandra" \
    -Dcassandra.triggers_dir="$CONF/cassandra-triggers" \
    -cp "$CONF:$LIB_DIR/cassandra/*" org.apache.cassandra.service.CassandraDaemon
}

start_jvm() {
  local svc=$1
  if svc_pid "$svc" >/dev/null; then
    say "$svc already running"
    return 0
  fi
  check_ports "$svc"
  "start_$svc"
}

apply_cql() {
  [[ -f $CASSANDRA_INIT_CQL ]] || return 0
  "$PYTHON" "$NATIVE_DIR/apply_cql.py" --wait 30 "$CASSANDRA_INIT_CQL" || die "applying $CASSANDRA_INIT_CQL failed"
}

# SIGTERM to all of them at once, SIGKILL to any still there after STOP_TIMEOUT.
stop_jvms() {
  local svc pid pids=() names=()
  for svc in "$@"; do
    if pid=$(svc_pid "$svc"); then
      kill -TERM "$pid"
      pids+=("$pid")
      names+=("$svc")
    else
      rm -f "$RUN/$svc.pid"
    fi
  done
  local deadline=$((SECONDS + STOP_TIMEOUT)) i alive
  while :; do
    alive=0
    for i in "${!pids[@]}"; do
      [[ -n $(tr '\0' ' ' <"/proc/${pids[$i]}/cmdline" 2>/dev/null) ]] && alive=1
    done
    ((alive)) || break
    if ((SECONDS >= deadline)); then
      for i in "${!pids[@]}"; do
        if kill -0 "${pids[$i]}" 2>/dev/null; then
          say "${names[$i]} ignored SIGTERM for ${STOP_TIMEOUT}s; killing it"
          kill -KILL "${pids[$i]}" 2>/dev/null || true
        fi
      done
      break
    fi
    sleep 0.5
  done
  for svc in "${names[@]}"; do
    rm -f "$RUN/$svc.pid"
    say "$svc stopped"
  done
}

# ---------------------------------------------------------------- commands

# Resolve the service arguments to a list in start order.
select_services() {
  local want=("$@") svc out=()
  ((${#want[@]})) || want=("${ALL_SERVICES[@]}")
  for svc in "${want[@]}"; do
    [[ -v PORTS[$svc] ]] || die "unknown service '$svc' (services: ${ALL_SERVICES[*]})"
  done
  for svc in "${ALL_SERVICES[@]}"; do
    [[ " ${want[*]} " == *" $svc "* ]] && out+=("$svc")
  done
  echo "${out[@]}"
}

has() { [[ " $1 " == *" $2 "* ]]; }

cmd_up() {
  local sel start=$SECONDS
  sel=$(select_services "$@")
  # Connect keeps all its state in Kafka.
  has "$sel" connect && ! has "$sel" kafka && sel=$(select_services $sel kafka)
  mkdir -p "$DATA" "$LOGS" "$RUN" "$CONF"
  if [[ $sel != pg ]]; then
    find_java
    fetch_jars
  fi
  has "$sel" pg && start_pg
  # Kafka and Cassandra boot side by side; Connect needs a ready broker.
  has "$sel" kafka && start_jvm kafka
  has "$sel" cassandra && start_jvm cassandra
  has "$sel" kafka && wait_ready kafka
  if has "$sel" connect; then
    start_jvm connect
    wait_ready connect
  fi
  if has "$sel" cassandra; then
    wait_ready cassandra
    apply_cql
  fi
  say "up ($sel) in $((SECONDS - start))s"
}

cmd_down() {
  local sel others=() svc
  sel=$(select_services "$@")
  # Connect first: it commits its offsets to Kafka as it stops.
  if has "$sel" connect; then stop_jvms connect; fi
  for svc in kafka cassandra; do
    if has "$sel" "$svc"; then others+=("$svc"); fi
  done
  stop_jvms ${others[@]+"${others[@]}"}
  if has "$sel" pg; then stop_pg; fi
}

cmd_status() {
  local sel svc state all_up=0 pid
  sel=$(select_services "$@")
  pg_version
  for svc in $sel; do
    pid=""
    [[ $svc != pg ]] && pid=$(svc_pid "$svc" || true)
    if ready "$svc" >/dev/null 2>&1 && running "$svc"; then
      state=up
    elif running "$svc"; then
      state=starting
      all_up=1
    else
      state=down
      all_up=1
    fi
    printf "%-10s %-9s ports %-10s %s\n" "$svc" "$state" "${PORTS[$svc]// /,}" "${pid:+pid $pid}"
  done
  return $all_up
}

cmd_logs() {
  local follow=0 sel svc files=()
  if [[ ${1:-} == -f ]]; then
    follow=1
    shift
  fi
  sel=$(select_services "$@")
  pg_version
  for svc in $sel; do
    [[ -r $(log_file "$svc") ]] && files+=("$(log_file "$svc")")
  done
  ((${#files[@]})) || die "no logs yet"
  if ((follow)); then
    exec tail -n 20 -F "${files[@]}"
  fi
  tail -n "${LOG_LINES:-40}" "${files[@]}"
}

cmd_wipe() {
  local sel svc
  sel=$(select_services "$@")
  cmd_down $sel
  for svc in $sel; do
    case $svc in
      pg)
        pg_version
        if pg_exists; then
          as_root pg_dropcluster --stop "$PG_VERSION" "$PG_CLUSTER"
          say "dropped PostgreSQL cluster $PG_VERSION/$PG_CLUSTER"
        fi
        ;;
      kafka | cassandra) rm -rf "${DATA:?}/$svc" ;;
    esac
  done
  # Everything wiped: take the rest of the runtime state too.
  if [[ $(select_services) == "$sel" ]]; then
    rm -rf "${DATA:?}" "${RUN:?}" "${CONF:?}" "${LOGS:?}"
    rmdir "$STACK_DIR" 2>/dev/null || true
  fi
  say "wiped: $sel"
}

main() {
  local cmd=${1:-}
  [[ $# -gt 0 ]] && shift
  case $cmd in
    up | down | status | logs | wipe) "cmd_$cmd" "$@" ;;
    *)
      sed -n '2,13s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
      exit 2
      ;;
  esac
}

main "$@"
