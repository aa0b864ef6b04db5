#!/usr/bin/env bash
# The test command: make sure PostgreSQL and RabbitMQ run (start them, or
# install them with apt on a Debian machine) and the private RabbitMQ test
# cluster too, then fmt, clippy and every test.
# Idempotent: services already up are left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*"; }
die() { printf 'FATAL: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for_port() { # name port seconds
  local name=$1 port=$2 deadline=$((SECONDS + $3))
  until port_open "$port"; do
    ((SECONDS < deadline)) || die "$name is not reachable on 127.0.0.1:$port"
    sleep 1
  done
}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  command -v apt-get >/dev/null || die "cannot install $*: no apt-get on this machine"
  log "installing $* with apt"
  if [ -z "${APT_UPDATED:-}" ]; then as_root apt-get update -qq; APT_UPDATED=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
  if port_open 5432; then log "PostgreSQL is up"; else
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
      apt_install postgresql
      # A fresh cluster asks for passwords over TCP; the tests connect as
      # postgres without one, as on the development machines.
      for hba in /etc/postgresql/*/main/pg_hba.conf; do
        as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
      done
    fi
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    log "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    wait_for_port PostgreSQL 5432 60
  fi
  if ! as_root runuser -u postgres -- psql -qtAc "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1; then
    log "creating database test"
    as_root runuser -u postgres -- createdb test
  fi
}

ensure_rabbitmq() {
  if port_open 5672; then log "RabbitMQ is up"; return; fi
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  if ! port_open 5672; then
    log "starting RabbitMQ"
    as_root rabbitmq-server -detached || true
  fi
  wait_for_port RabbitMQ 5672 120
  as_root rabbitmqctl await_startup >/dev/null 2>&1 || true
}

# The Ruby extension's build (magnus/rb-sys: ruby headers, libclang), its
# suite, and the gem's Bundler example.
ensure_ruby() {
  local pkg missing=()
  for pkg in ruby ruby-dev libclang-dev ruby-minitest ruby-bundler; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  if ((${#missing[@]})); then apt_install "${missing[@]}"; else log "Ruby toolchain present"; fi
}

# The private 3-node cluster (127.0.0.1:5681-5683) of tests/rabbitmq_cluster.rs,
# beside the system node; started here so the test finds it up (it starts it
# itself otherwise). Left running: a later start is a no-op.
ensure_cluster() {
  log "RabbitMQ test cluster (scripts/rabbitmq-cluster.sh)"
  as_root bash scripts/rabbitmq-cluster.sh start >/dev/null
}

# openssl makes the TLS tests' certificates (scripts/tls-certs.sh).
ensure_openssl() {
  command -v openssl >/dev/null || apt_install openssl
}

ensure_postgres
ensure_rabbitmq
ensure_cluster
ensure_ruby
ensure_openssl

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --all-targets -- -D warnings
cargo clippy --all-targets --features conformance,cli,opentelemetry -- -D warnings
cargo clippy --lib --no-default-features --features opentelemetry -- -D warnings
cargo clippy -p tasker-messaging-ruby --all-targets -- -D warnings

# Each provider on its own, and the in-memory queue alone: the library
# builds, lints and passes its unit tests without the other provider's
# dependencies (none of them is in the tree).
for features in "pgmq" "rabbitmq" ""; do
  set_name=${features:-in-memory only}
  log "cargo clippy + test --lib, --no-default-features --features '$features' ($set_name)"
  cargo clippy --lib --no-default-features --features "$features" -- -D warnings
  cargo test --lib --quiet --no-default-features --features "$features"
done
tree_count() { cargo tree -e normal --no-default-features --features "$1" | grep -c "$2" || true; }
[ "$(tree_count rabbitmq sqlx)" = 0 ] || die "--features rabbitmq alone builds sqlx"
[ "$(tree_count pgmq amqprs)" = 0 ] || die "--features pgmq alone builds amqprs"

log "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet --features conformance,opentelemetry
log "cargo test"
# The live suites are I/O-bound: run more cases at once than there are cores.
# `cli` builds the binary for tests/cli.rs.
RUST_TEST_THREADS=${RUST_TEST_THREADS:-8} cargo test --all-targets --features cli,opentelemetry
log "doctests (every MessagingService method's example, the README's)"
cargo test --doc --features cli,opentelemetry
log "Ruby docs (rdoc: every public item documented)"
rdoc_out=$(cd bindings/ruby && rdoc -C --dry-run lib 2>&1)
grep -q "100.00% documented" <<<"$rdoc_out" || { printf '%s\n' "$rdoc_out" >&2; die "rdoc: undocumented Ruby API (above)"; }

log "Ruby gem: gem build, then gem install --local into a temporary GEM_HOME, offline"
bash scripts/build-gem.sh
gem_home=$(mktemp -d)
trap 'rm -rf "$gem_home"' EXIT
# A debug build in the test build's target directory: it reuses the compiled
# dependencies (a release build of the tree takes minutes more).
CARGO_NET_OFFLINE=true TASKER_CORE_CARGO_PROFILE=dev CARGO_TARGET_DIR="$PWD/target" \
  GEM_HOME="$gem_home" gem install --local --no-document target/gem/tasker_core-*.gem

log "Ruby suite (bindings/ruby/test), through the installed gem"
ruby_suite() {
  (cd bindings/ruby && GEM_HOME="$gem_home" TASKER_CORE_GEM=1 MT_CPU=${MT_CPU:-6} \
    ruby -Itest -e 'ARGV.each { |f| require File.expand_path(f) }' "$@")
}
ruby_suite test/contract_test.rb test/boundary_test.rb test/fork_test.rb test/types_test.rb test/wait_test.rb
ruby_suite test/config_test.rb   # changes ENV: a process of its own
ruby_suite test/threads_test.rb  # timed: alone

log "Bundler example (bindings/ruby/examples/bundler), on PGMQ"
# Bundler never compiles a path gem's extension: a debug build into lib/.
bash scripts/build-ruby-ext.sh --debug
(cd bindings/ruby/examples/bundler && export BUNDLE_PATH="$gem_home/bundle" &&
  bundle install --local --quiet && bundle exec ruby worker.rb)
