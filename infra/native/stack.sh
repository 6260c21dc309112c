#!/usr/bin/env bash
# The CDC stack without Docker, every service on loopback:
#   postgres   PostgreSQL (a Debian cluster, default 15/cdc) on 5432 ("pg" works too)
#   kafka      Kafka broker+controller (KRaft) on 9092, controller 9093
#   connect    Kafka Connect (distributed) with Debezium's PostgreSQL plugin on 8083
#   cassandra  Cassandra 5.0, CQL on 9042 (gossip on 7000)
#
# Usage: stack.sh up|down|status|wipe [service...]
#        stack.sh logs [-f] [service...]
#        stack.sh java-major JAVA    (the major version of that java binary: 17, 11, ...)
# Runtime state (data, logs, pids, rendered configs) lives in $STACK_DIR
# (default <repo>/.stack); jars in infra/native/lib, fetched by Maven.
set -Eeuo pipefail
trap 'echo "stack: error: line $LINENO: $BASH_COMMAND failed" >&2' ERR

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
# The project's virtualenv has cassandra-driver, which apply_cql.py needs.
if [[ -z ${PYTHON:-} ]]; then
  PYTHON=python3
  [[ -x $REPO_DIR/.venv/bin/python ]] && PYTHON=$REPO_DIR/.venv/bin/python
fi

ALL_SERVICES=(postgres kafka cassandra connect)
declare -A PORTS=([postgres]="$PG_PORT" [kafka]="9092 9093" [connect]=8083 [cassandra]="9042 7000")

say() { echo "stack: $*"; }
die() { echo "stack: error: $*" >&2; exit 1; }

# ---------------------------------------------------------------- helpers

as_root() { if [[ $EUID -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# psql and friends as the cluster owner, over the Unix socket (peer auth), with the
# password variables in the environment (never on a command line) for psql's \getenv.
# cd / because postgres may not be allowed into the caller's directory.
as_postgres() {
  if [[ $EUID -eq 0 ]]; then
    (cd / && runuser -u postgres -- "$@")
  else
    (cd / && sudo --preserve-env=POSTGRES_PASSWORD,PRODUCER_PASSWORD,DEBEZIUM_PASSWORD -u postgres -- "$@")
  fi
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

# Empty for a process that is gone, or a zombie.
cmdline() { tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline"; }

# The pid file alone could name a recycled pid; the JVM's command line carries a marker.
svc_pid() {
  local file=$RUN/$1.pid pid
  [[ -f $file ]] || return 1
  pid=$(<"$file")
  [[ $(cmdline "$pid") == *"-Dnative.stack.service=$1 "* ]] || return 1
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
  # shellcheck disable=SC2016 # $$ and $@ belong to the inner bash
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
  if [[ $1 == postgres ]]; then echo "/var/log/postgresql/postgresql-$PG_VERSION-$PG_CLUSTER.log"; else echo "$LOGS/$1.log"; fi
}

ready() {
  case $1 in
    postgres) pg_isready -q -h 127.0.0.1 -p "$PG_PORT" ;;
    kafka) "$PYTHON" "$NATIVE_DIR/probe.py" kafka 127.0.0.1:9092 ;;
    connect) "$PYTHON" "$NATIVE_DIR/probe.py" connect 127.0.0.1:8083 ;;
    # A login (CASSANDRA_USER/CASSANDRA_PASSWORD, loaded by the caller, else the default cassandra/cassandra
    # of a new node) and a query: with PasswordAuthenticator the node asks for a login before it can serve one.
    cassandra) "$PYTHON" "$NATIVE_DIR/probe.py" cql 127.0.0.1:9042 ;;
  esac
}

running() {
  if [[ $1 == postgres ]]; then pg_online; else svc_pid "$1" >/dev/null; fi
}

wait_ready() {
  local svc=$1 deadline=$((SECONDS + READY_TIMEOUT)) said
  # Once, here: ready() runs in a subshell, where what load_passwords exports would not outlive one poll.
  load_passwords
  until said=$(ready "$svc" 2>&1); do
    running "$svc" || fail "$svc" "exited during startup"
    ((SECONDS < deadline)) || fail "$svc" "not ready after ${READY_TIMEOUT}s${said:+ (last check: ${said//$'\n'/ })}"
    sleep 1
  done
}

# ---------------------------------------------------------------- postgres

# Newest installed server unless PG_VERSION says otherwise.
pg_version() {
  local dir
  if [[ -z ${PG_VERSION:-} ]]; then
    for dir in /usr/lib/postgresql/*/bin/postgres; do
      [[ -x $dir ]] && dir=${dir#/usr/lib/postgresql/} && PG_VERSION=${dir%%/*}
    done
  fi
  PG_VERSION=${PG_VERSION:-}
}

pg_detect() {
  pg_version
  if ! command -v pg_createcluster >/dev/null || [[ ! -x /usr/lib/postgresql/$PG_VERSION/bin/postgres ]]; then
    die "PostgreSQL server not installed: apt-get install -y postgresql"
  fi
}

pg_exists() { [[ -n $PG_VERSION && -f /etc/postgresql/$PG_VERSION/$PG_CLUSTER/postgresql.conf ]]; }

pg_online() {
  pg_exists && pg_lsclusters -h | awk -v v="$PG_VERSION" -v c="$PG_CLUSTER" '$1 == v && $2 == c && $4 ~ /^online/ {f = 1} END {exit !f}'
}

# Another Debian cluster (typically 15/main) serving our port.
pg_conflicts() {
  pg_lsclusters -h | awk -v p="$PG_PORT" -v me="$PG_VERSION/$PG_CLUSTER" '$3 == p && $4 ~ /^online/ && $1 "/" $2 != me {print $1 "/" $2}'
}

pg_configure() {
  local confd=/etc/postgresql/$PG_VERSION/$PG_CLUSTER/conf.d before
  before=$(cat "$confd"/*.conf 2>/dev/null | sha256sum || true)
  if [[ -f $PG_CONF_FILE ]]; then
    as_root install -m 644 -o postgres -g postgres "$PG_CONF_FILE" "$confd/10-infra.conf"
  else
    say "warning: $PG_CONF_FILE not found; using the logical-replication minimum"
    printf "wal_level = logical\nmax_replication_slots = 4\nmax_wal_senders = 4\n" |
      as_root tee "$confd/10-infra.conf" >/dev/null
  fi
  # Included after the infra settings, so these win: loopback only for the native stack.
  printf "listen_addresses = 'localhost'\nport = %s\n" "$PG_PORT" | as_root tee "$confd/90-native.conf" >/dev/null
  as_root chown postgres:postgres "$confd/10-infra.conf" "$confd/90-native.conf"
  if [[ $(cat "$confd"/*.conf | sha256sum) != "$before" ]] && pg_online; then
    say "note: PostgreSQL settings changed; they apply after: $0 down postgres && $0 up postgres"
  fi
}

start_postgres() {
  pg_detect
  if ! pg_exists; then
    say "creating PostgreSQL cluster $PG_VERSION/$PG_CLUSTER"
    as_root pg_createcluster --start-conf=manual -p "$PG_PORT" "$PG_VERSION" "$PG_CLUSTER" >/dev/null
  fi
  pg_configure
  if pg_online; then
    say "postgres already running"
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
    check_ports postgres
    as_root pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start || fail postgres "failed to start"
  fi
  wait_ready postgres
  pg_init_db
}

# Passwords come from the environment, else from the repo's .env (as `make` exports it).
load_passwords() {
  local name line
  for name in POSTGRES_PASSWORD PRODUCER_PASSWORD DEBEZIUM_PASSWORD CASSANDRA_PASSWORD; do
    [[ -n ${!name:-} || ! -f $REPO_DIR/.env ]] && continue
    line=$(grep -E "^[[:space:]]*$name=" "$REPO_DIR/.env" | tail -n1 || true)
    [[ -n $line ]] && export "$name=${line#*=}"
  done
  return 0
}

# init-db.sql is idempotent, so it runs on every `up`: roles, grants and passwords follow
# the current file and .env. It runs in one transaction; if it fails on a database this
# call created, the database is dropped again so nothing half-made is left behind.
pg_init_db() {
  load_passwords
  # The tests connect as postgres over TCP, which needs a password.
  if [[ -n ${POSTGRES_PASSWORD:-} ]]; then
    as_postgres psql -X -q -p "$PG_PORT" -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
\getenv pw POSTGRES_PASSWORD
ALTER ROLE postgres PASSWORD :'pw';
SQL
  fi
  if [[ ! -f $PG_INIT_SQL ]]; then
    say "warning: $PG_INIT_SQL not found; database $PG_DB not created"
    return 0
  fi
  [[ -n ${PRODUCER_PASSWORD:-} && -n ${DEBEZIUM_PASSWORD:-} ]] ||
    die "PRODUCER_PASSWORD and DEBEZIUM_PASSWORD must be set (in the environment or $REPO_DIR/.env; make .env writes one)"
  local created=0
  if [[ -z $(as_postgres psql -X -p "$PG_PORT" -tAc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'") ]]; then
    say "creating database $PG_DB"
    as_postgres createdb -p "$PG_PORT" "$PG_DB"
    created=1
  fi
  if ! as_postgres psql -X -q -p "$PG_PORT" -d "$PG_DB" -v ON_ERROR_STOP=1 --single-transaction -f - \
    <"$PG_INIT_SQL" >"$LOGS/postgres-init.log" 2>&1; then
    ((created)) && as_postgres dropdb -p "$PG_PORT" "$PG_DB"
    cat "$LOGS/postgres-init.log" >&2
    die "$PG_INIT_SQL failed on database $PG_DB (log: $LOGS/postgres-init.log)"
  fi
}

stop_postgres() {
  pg_version
  if pg_online; then
    as_root pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" stop -m fast
    say "postgres stopped"
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
  launch kafka "$JAVA" -Dnative.stack.service=kafka -Xms256m -Xmx"$KAFKA_HEAP" \
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$CONF/log4j2.properties" \
    -cp "$LIB_DIR/kafka/*" kafka.Kafka "$CONF/kafka.properties"
}

start_connect() {
  # The worker resolves ${env:DEBEZIUM_PASSWORD} in the connector config from its own environment.
  load_passwords
  [[ -n ${DEBEZIUM_PASSWORD:-} ]] || die "DEBEZIUM_PASSWORD must be set (in the environment or $REPO_DIR/.env)"
  render connect-distributed.properties
  render log4j2.properties
  launch connect "$JAVA" -Dnative.stack.service=connect -Xms256m -Xmx"$CONNECT_HEAP" \
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$CONF/log4j2.properties" \
    -cp "$LIB_DIR/connect/*" org.apache.kafka.connect.cli.ConnectDistributed "$CONF/connect-distributed.properties"
}

# Password authentication, set exactly as the compose stack sets it (JVM_EXTRA_OPTS there; a test holds
# the two equal): Cassandra 4.1+ reads cassandra.settings.<key> system properties over cassandra.yaml
# once cassandra.config.allow_system_properties is true (it is false by default).
# No superuser setup delay, so apply_cql.py can create the pipeline's role as soon as CQL answers.
CASSANDRA_SETTINGS="-Dcassandra.config.allow_system_properties=true -Dcassandra.settings.authenticator=PasswordAuthenticator -Dcassandra.superuser_setup_delay_ms=0"

start_cassandra() {
  render cassandra.yaml
  cp "$NATIVE_DIR/conf/logback.xml" "$CONF/logback.xml"
  mkdir -p "$DATA"/cassandra/{data,commitlog,saved_caches,hints,cdc_raw} "$CONF/cassandra-triggers"
  local jamm opts
  jamm=$(compgen -G "$LIB_DIR/cassandra/jamm-*.jar" | head -n1) || die "jamm jar missing from $LIB_DIR/cassandra"
  mapfile -t opts < <(grep -E '^-' "$NATIVE_DIR/conf/cassandra-jvm.options")
  launch cassandra "$CASSANDRA_JAVA" -Dnative.stack.service=cassandra -Xms256m -Xmx"$CASSANDRA_HEAP" \
    "${opts[@]}" -javaagent:"$jamm" $CASSANDRA_SETTINGS \
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
  load_passwords   # CASSANDRA_PASSWORD: apply_cql.py logs in with it (creating the role on a new node)
  [[ -n ${CASSANDRA_PASSWORD:-} ]] || die "CASSANDRA_PASSWORD must be set (in the environment or $REPO_DIR/.env)"
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
      [[ -n $(cmdline "${pids[$i]}") ]] && alive=1
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

# Resolve the service arguments into SEL, a word list in start order. (A global, not
# output: die inside a command substitution would only end the subshell.)
select_services() {
  local want=("$@") svc out=() i
  ((${#want[@]})) || want=("${ALL_SERVICES[@]}")
  for i in "${!want[@]}"; do
    [[ ${want[i]} == pg ]] && want[i]=postgres
  done
  for svc in "${want[@]}"; do
    [[ -v PORTS[$svc] ]] || die "unknown service '$svc' (services: ${ALL_SERVICES[*]})"
  done
  for svc in "${ALL_SERVICES[@]}"; do
    [[ " ${want[*]} " == *" $svc "* ]] && out+=("$svc")
  done
  SEL="${out[*]}"
}

has() { [[ " $1 " == *" $2 "* ]]; }

cmd_up() {
  local sel start=$SECONDS
  select_services "$@"
  sel=$SEL
  # Connect keeps all its state in Kafka.
  if has "$sel" connect && ! has "$sel" kafka; then
    # shellcheck disable=SC2086 # $sel is a word list
    select_services $sel kafka
    sel=$SEL
  fi
  mkdir -p "$DATA" "$LOGS" "$RUN" "$CONF"
  # What `make down`, `make logs` and `make wipe` act on (infra/up.sh), also when the tests start us.
  echo native >"$STACK_DIR/mode"
  if [[ $sel != postgres ]]; then
    find_java
    fetch_jars
  fi
  has "$sel" postgres && start_postgres
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
  select_services "$@"
  sel=$SEL
  # Connect first: it commits its offsets to Kafka as it stops.
  if has "$sel" connect; then stop_jvms connect; fi
  for svc in kafka cassandra; do
    if has "$sel" "$svc"; then others+=("$svc"); fi
  done
  stop_jvms ${others[@]+"${others[@]}"}
  if has "$sel" postgres; then stop_postgres; fi
}

cmd_status() {
  local sel svc state all_up=0 pid
  select_services "$@"
  sel=$SEL
  pg_version
  load_passwords
  for svc in $sel; do
    pid=""
    [[ $svc != postgres ]] && pid=$(svc_pid "$svc" || true)
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
  select_services "$@"
  sel=$SEL
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
  select_services "$@"
  sel=$SEL
  # shellcheck disable=SC2086 # $sel is a word list
  cmd_down $sel
  for svc in $sel; do
    case $svc in
      postgres)
        pg_version
        if pg_exists; then
          as_root pg_dropcluster --stop "$PG_VERSION" "$PG_CLUSTER"
          # pg_dropcluster leaves conf.d behind with the files it did not create.
          as_root rm -rf "/etc/postgresql/$PG_VERSION/$PG_CLUSTER"
          say "dropped PostgreSQL cluster $PG_VERSION/$PG_CLUSTER"
        fi
        ;;
      kafka | cassandra) rm -rf "${DATA:?}/$svc" ;;
    esac
  done
  # Everything wiped: take the rest of the runtime state too.
  if [[ ${ALL_SERVICES[*]} == "$sel" ]]; then
    rm -rf "${DATA:?}" "${RUN:?}" "${CONF:?}" "${LOGS:?}"
    if [[ -f $STACK_DIR/mode && $(<"$STACK_DIR/mode") == native ]]; then rm -f "$STACK_DIR/mode"; fi
    rmdir "$STACK_DIR" 2>/dev/null || true
  fi
  say "wiped: $sel"
}

main() {
  local cmd=${1:-}
  [[ $# -gt 0 ]] && shift
  case $cmd in
    up | down | logs | wipe) "cmd_$cmd" "$@" ;;
    java-major) java_major "${1:?stack.sh java-major needs the path of a java binary}" ;;
    # Exit 1 when a service is not up, without the ERR trap's message.
    status) cmd_status "$@" || exit 1 ;;
    *)
      awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "${BASH_SOURCE[0]}" >&2
      exit 2
      ;;
  esac
}

main "$@"
