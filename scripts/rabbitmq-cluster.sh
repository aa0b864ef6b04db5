#!/usr/bin/env bash
# A private 3-node RabbitMQ cluster for the cluster fault test, beside the
# machine's own node (rabbit@localhost on 5672), which it never touches.
#
#   scripts/rabbitmq-cluster.sh start            start (and cluster) the nodes; no-op when up
#   scripts/rabbitmq-cluster.sh stop             stop the nodes (data kept)
#   scripts/rabbitmq-cluster.sh status           each node's VM and app state
#   scripts/rabbitmq-cluster.sh urls             the nodes' AMQP URLs, one a line
#   scripts/rabbitmq-cluster.sh ctl N ARGS...    rabbitmqctl on node N (1-3)
#   scripts/rabbitmq-cluster.sh leader QUEUE     the node number leading QUEUE
#   scripts/rabbitmq-cluster.sh certs            the TLS test certificates' directory
#
# Nodes tmcluster1..3@localhost listen on 127.0.0.1:5681-5683 (distribution
# on 25681-25683); node 1 also serves amqps on 127.0.0.1:5691 with
# certificates from scripts/tls-certs.sh (in $BASE/certs; a client's
# certificate is verified when it presents one, none is required). Each node
# has its own config, plugins (none), data and logs
# under $TASKER_CLUSTER_DIR (default /var/tmp/tasker-rabbitmq-cluster). They
# run as the rabbitmq user and share its Erlang cookie. Needs root (or the
# rabbitmq user) and rabbitmq-server installed (apt on a Debian machine).
set -euo pipefail

BASE=${TASKER_CLUSTER_DIR:-/var/tmp/tasker-rabbitmq-cluster}
BIN=/usr/lib/rabbitmq/bin
HERE=$(cd "$(dirname "$0")" && pwd)
CERTS="$BASE/certs"
AMQPS_PORT=5691
NODES=(1 2 3)
STARTUP_TIMEOUT=${TASKER_CLUSTER_STARTUP_TIMEOUT:-90}

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'FATAL: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run $0 as root (it chowns the node directories to rabbitmq and runs the nodes as that user)"

node_name() { echo "tmcluster$1@localhost"; }
node_port() { echo $((5680 + $1)); }

as_rabbitmq() { runuser -u rabbitmq -- env "$@"; }

# The environment every command about node $1 runs with: never the system
# node's config, env file or plugins.
node_env() {
  local n=$1 dir="$BASE/node$1"
  echo HOME=/var/lib/rabbitmq \
    RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" \
    RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
    RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
    RABBITMQ_NODENAME="$(node_name "$n")" \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT="$(node_port "$n")" \
    RABBITMQ_DIST_PORT=$((20000 + $(node_port "$n"))) \
    RABBITMQ_MNESIA_BASE="$dir/mnesia" \
    RABBITMQ_LOG_BASE="$dir/log" \
    RABBITMQ_PID_FILE="$dir/pid" \
    ERL_EPMD_ADDRESS=127.0.0.1
}

ctl() { # n args...
  local n=$1
  shift
  # shellcheck disable=SC2046
  as_rabbitmq $(node_env "$n") "$BIN/rabbitmqctl" -n "$(node_name "$n")" "$@"
}

ensure_installed() {
  [ -x "$BIN/rabbitmq-server" ] && return
  command -v apt-get >/dev/null || die "rabbitmq-server is not installed and there is no apt-get"
  log "installing rabbitmq-server with apt"
  apt-get update -qq
  env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
}

prepare() { # n
  local n=$1 dir="$BASE/node$1"
  mkdir -p "$dir/mnesia" "$dir/log"
  cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.local = 127.0.0.1:$(node_port "$n")
loopback_users.guest = true
EOF
  if [ "$n" -eq 1 ]; then
    cat >>"$dir/rabbitmq.conf" <<EOF
listeners.ssl.default = 127.0.0.1:$AMQPS_PORT
ssl_options.cacertfile = $CERTS/ca.pem
ssl_options.certfile = $CERTS/server.pem
ssl_options.keyfile = $CERTS/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
EOF
  fi
  echo '[].' >"$dir/enabled_plugins"
  echo '[{kernel, [{inet_dist_use_interface, {127,0,0,1}}]}].' >"$dir/advanced.config"
  : >"$dir/rabbitmq-env.conf"
  chown -R rabbitmq:rabbitmq "$BASE"
}

# `rabbitmqctl status` refuses when the app is stopped, so it cannot tell a
# stopped app from a dead VM: ping answers whenever the VM is up.
vm_alive() { ctl "$1" -q ping >/dev/null 2>&1; }
app_running() { ctl "$1" -q eval 'rabbit:is_running().' 2>/dev/null | grep -q true; }

launch() { # n: boot node n's VM unless it is alive; start its app if stopped
  if vm_alive "$1"; then
    app_running "$1" && return 0
    log "starting the stopped app of $(node_name "$1")"
    # In the background: a clustered app may wait for peers not started yet.
    { ctl "$1" -q start_app >/dev/null 2>&1 || true; } &
    return 0
  fi
  log "starting $(node_name "$1") on 127.0.0.1:$(node_port "$1")"
  # Returns 0 even when the node dies at boot: await_startup tells. Booted
  # in its own directory: the VM keeps the caller's working directory, and
  # once that is deleted (a removed checkout) stop_app fails with enoent.
  # shellcheck disable=SC2046
  (cd "$BASE/node$1" && as_rabbitmq $(node_env "$1") "$BIN/rabbitmq-server" -detached) >/dev/null 2>&1 || true
}

await_node() { # n
  local n=$1 attempt
  for attempt in 1 2 3; do
    if ctl "$n" -q await_startup --timeout "$STARTUP_TIMEOUT" >/dev/null 2>&1; then
      return 0
    fi
    log "$(node_name "$n") not up yet (attempt $attempt)"
    launch "$n"
    sleep 2
  done
  die "$(node_name "$n") did not start; see $BASE/node$n/log"
}

in_cluster() { # n: whether node 1's cluster lists node n
  ctl 1 -q cluster_status --formatter json 2>/dev/null | grep -q "\"$(node_name "$1")\""
}

join() { # n
  local n=$1
  in_cluster "$n" && return 0
  log "joining $(node_name "$n") to $(node_name 1)"
  local out="$BASE/node$n/log/join.out"
  # Chatty (feature-flag warnings): kept in a file, shown on failure.
  { ctl "$n" -q stop_app && ctl "$n" -q reset && ctl "$n" -q join_cluster "$(node_name 1)" \
    && ctl "$n" -q start_app && ctl "$n" -q await_startup --timeout "$STARTUP_TIMEOUT"; } >"$out" 2>&1 \
    || { cat "$out" >&2; die "$(node_name "$n") could not join $(node_name 1)"; }
}

# Whether node 1 itself listens for amqps (asked of the node, not parsed
# from `status`); a node booted before it was configured does not.
has_amqps() {
  # #listener{node, protocol, host, ip_address, port, opts}
  ctl 1 -q eval "lists:any(fun(L) -> element(3, L) =:= 'amqp/ssl' andalso element(6, L) =:= $AMQPS_PORT end, rabbit_networking:node_listeners(node()))." 2>/dev/null | grep -q true
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The TLS tests' earlier private node, which held the amqps port: stopped.
stop_old_tls_node() {
  runuser -u rabbitmq -- env HOME=/var/lib/rabbitmq "$BIN/rabbitmqctl" -n tmtls@localhost -q ping >/dev/null 2>&1 || return 0
  log "stopping tmtls@localhost, which holds 127.0.0.1:$AMQPS_PORT"
  runuser -u rabbitmq -- env HOME=/var/lib/rabbitmq "$BIN/rabbitmqctl" -n tmtls@localhost -q shutdown >/dev/null 2>&1 || true
}

start() {
  ensure_installed
  command -v openssl >/dev/null || die "openssl is needed for the TLS certificates"
  bash "$HERE/tls-certs.sh" "$CERTS"
  local n
  # All booted before any is awaited: a clustered node restarting waits for
  # the peers that stopped after it.
  for n in "${NODES[@]}"; do
    prepare "$n"
    launch "$n"
  done
  for n in "${NODES[@]}"; do await_node "$n"; done
  for n in 2 3; do join "$n"; done
  if ! has_amqps; then
    stop_old_tls_node
    if port_open "$AMQPS_PORT"; then
      local holder
      holder=$(ss -Hltnp "sport = :$AMQPS_PORT" 2>/dev/null || true)
      die "another process holds 127.0.0.1:$AMQPS_PORT, which $(node_name 1) serves amqps on: ${holder:-unknown (no ss)}"
    fi
    log "restarting $(node_name 1) to open amqps on 127.0.0.1:$AMQPS_PORT"
    # shutdown (unlike stop) returns once the VM has exited.
    ctl 1 -q shutdown >/dev/null 2>&1 || true
    launch 1
    await_node 1
    has_amqps || { ctl 1 status >&2 || true; die "$(node_name 1) has no amqps listener on $AMQPS_PORT"; }
  fi
  status
}

stop() {
  local n
  for n in "${NODES[@]}"; do
    if vm_alive "$n"; then
      log "stopping $(node_name "$n")"
      ctl "$n" -q shutdown >/dev/null 2>&1 || true
    fi
  done
}

status() {
  local n state
  for n in "${NODES[@]}"; do
    if ! vm_alive "$n"; then state="vm down"
    elif app_running "$n"; then state="vm alive, app running"
    else state="vm alive, app stopped"; fi
    echo "$(node_name "$n") 127.0.0.1:$(node_port "$n") $state"
  done
}

urls() {
  local n
  for n in "${NODES[@]}"; do echo "amqp://guest:guest@127.0.0.1:$(node_port "$n")/%2f"; done
}

leader() { # queue: the number of the node leading it, asked of any running node
  local queue=$1 n out
  for n in "${NODES[@]}"; do
    if out=$(ctl "$n" -q list_queues name leader --no-table-headers 2>/dev/null); then
      echo "$out" | awk -v q="$queue" '$1 == q { sub(/^tmcluster/, "", $2); sub(/@.*/, "", $2); print $2; found=1 } END { exit !found }' && return 0
    fi
  done
  die "no running node knows a leader for queue $queue"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  urls) urls ;;
  ctl) shift; [ $# -ge 1 ] || die "usage: $0 ctl N ARGS..."; ctl "$@" ;;
  leader) [ $# -eq 2 ] || die "usage: $0 leader QUEUE"; leader "$2" ;;
  certs) echo "$CERTS" ;;
  *) die "usage: $0 start|stop|status|urls|ctl N ARGS...|leader QUEUE|certs" ;;
esac
