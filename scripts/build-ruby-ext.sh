#!/usr/bin/env bash
# Builds the Ruby extension and puts it where `require "tasker_core"` finds it:
# bindings/ruby/lib/tasker_core/tasker_messaging_ruby.so (Init_tasker_messaging_ruby).
# Needs ruby, ruby-dev and libclang-dev (scripts/test.sh installs them); no rubygems.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build -p tasker-messaging-ruby --release
target_dir=$(cargo metadata --format-version 1 --no-deps | ruby -rjson -e 'print JSON.parse($stdin.read)["target_directory"]')
install -m 0755 "$target_dir/release/libtasker_messaging_ruby.so" \
  bindings/ruby/lib/tasker_core/tasker_messaging_ruby.so
echo "built bindings/ruby/lib/tasker_core/tasker_messaging_ruby.so"
