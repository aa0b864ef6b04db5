#!/usr/bin/env bash
# A private RabbitMQ node with an amqps listener, for tests/tls.rs:
#   scripts/rabbitmq-tls-node.sh start|stop|status
# Node tmtls@localhost: amqp on 127.0.0.1:5691, amqps on 127.0.0.1:5692
# (certificates from scripts/tls-certs.sh in $BASE/certs; peers verified when
# they present a certificate, none required), distribution port 25691, no
# plugins. Data, logs and config live in $BASE, owned by the rabbitmq user;
# the system node (rabbit@localhost, 5672) and /etc/rabbitmq are not used.
# `start` is idempotent and fails loudly (exit 1, log tail) if the node does
# not come up.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
BASE=${TASKER_TLS_NODE_BASE:-/var/tmp/tasker-rabbitmq-tls}
NODE=tmtls@localhost
AMQP_PORT=5691
AMQPS_PORT=5692
DIST_PORT=25691

as_rabbitmq() {
    runuser -u rabbitmq -- env \
        HOME=/var/lib/rabbitmq \
        RABBITMQ_CONF_ENV_FILE="$BASE/rabbitmq-env.conf" \
        RABBITMQ_NODENAME="$NODE" \
        RABBITMQ_DIST_PORT="$DIST_PORT" \
        RABBITMQ_CONFIG_FILE="$BASE/rabbitmq.conf" \
        RABBITMQ_ADVANCED_CONFIG_FILE="$BASE/advanced.config" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$BASE/enabled_plugins" \
        RABBITMQ_MNESIA_BASE="$BASE/mnesia" \
        RABBITMQ_LOG_BASE="$BASE/log" \
        RABBITMQ_PID_FILE="$BASE/tmtls.pid" \
        ERL_EPMD_ADDRESS=127.0.0.1 \
        "$@"
}

ctl() { as_rabbitmq rabbitmqctl -n "$NODE" "$@"; }

running() { ctl ping >/dev/null 2>&1; }

write_config() {
    mkdir -p "$BASE/mnesia" "$BASE/log"
    bash "$here/tls-certs.sh" "$BASE/certs"
    cat > "$BASE/rabbitmq-env.conf" <<ENV
# Replaces /etc/rabbitmq/rabbitmq-env.conf for this node only.
ENV
    cat > "$BASE/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$AMQP_PORT
listeners.ssl.default = 127.0.0.1:$AMQPS_PORT
ssl_options.cacertfile = $BASE/certs/ca.pem
ssl_options.certfile = $BASE/certs/server.pem
ssl_options.keyfile = $BASE/certs/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
CONF
    echo '[].' > "$BASE/enabled_plugins"
    echo '[].' > "$BASE/advanced.config"
    chown -R rabbitmq:rabbitmq "$BASE"
}

case ${1:-} in
start)
    if running; then
        bash "$here/tls-certs.sh" "$BASE/certs"  # adds any certificate missing
        echo "$NODE already running (amqps on $AMQPS_PORT)"
        exit 0
    fi
    write_config
    as_rabbitmq env ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}" \
        setsid rabbitmq-server >"$BASE/log/console.out" 2>&1 < /dev/null &
    # await_startup needs the Erlang node up first: wait for a ping.
    for _ in $(seq 1 60); do running && break; sleep 1; done
    if ! ctl await_startup --timeout 90 >/dev/null 2>&1; then
        echo "error: $NODE did not start; last lines of its logs:" >&2
        tail -n 30 "$BASE/log/console.out" "$BASE"/log/*.log >&2 2>/dev/null || true
        exit 1
    fi
    # The amqps listener must be up, not just the node.
    if ! ctl status 2>/dev/null | grep -q "port: $AMQPS_PORT.*amqp/ssl"; then
        echo "error: $NODE has no amqps listener on $AMQPS_PORT:" >&2
        ctl status >&2 || true
        exit 1
    fi
    echo "$NODE started (amqp $AMQP_PORT, amqps $AMQPS_PORT)"
    ;;
stop)
    if running; then
        ctl shutdown >/dev/null
    fi
    echo "$NODE stopped"
    ;;
status)
    if running; then ctl status; else echo "$NODE is not running"; exit 3; fi
    ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
