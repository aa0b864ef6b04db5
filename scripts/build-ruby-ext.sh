#!/usr/bin/env bash
# Builds the Ruby extension and puts it where `require "tasker_core"` finds it:
# bindings/ruby/lib/tasker_core/tasker_messaging_ruby.so (Init_tasker_messaging_ruby).
# Needs ruby, ruby-dev and libclang-dev (scripts/test.sh installs them); no rubygems.
#
#   bash scripts/build-ruby-ext.sh           # release: for use and benchmarks
#   bash scripts/build-ruby-ext.sh --debug   # reuses the test build's dependencies
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  --debug) profile=debug; flags=() ;;
  "") profile=release; flags=(--release) ;;
  *) echo "usage: $0 [--debug]" >&2; exit 2 ;;
esac
cargo build -p tasker-messaging-ruby "${flags[@]}"
target_dir=$(cargo metadata --format-version 1 --no-deps | ruby -rjson -e 'print JSON.parse($stdin.read)["target_directory"]')
install -m 0755 "$target_dir/$profile/libtasker_messaging_ruby.so" \
  bindings/ruby/lib/tasker_core/tasker_messaging_ruby.so
echo "built bindings/ruby/lib/tasker_core/tasker_messaging_ruby.so ($profile)"
