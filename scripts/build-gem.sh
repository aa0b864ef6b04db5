#!/usr/bin/env bash
# Builds the tasker_core source gem: copies the crate's sources (the files
# git tracks that cargo needs) into bindings/ruby/ext/tasker_core/crate, then
# runs `gem build`. The gem compiles them with cargo when it is installed:
#
#   bash scripts/build-gem.sh                    # writes target/gem/tasker_core-<version>.gem
#   gem install --local target/gem/tasker_core-*.gem
set -euo pipefail
cd "$(dirname "$0")/.."

command -v gem >/dev/null || { echo "FATAL: gem not found (Debian: apt install ruby)" >&2; exit 1; }
crate=bindings/ruby/ext/tasker_core/crate
rm -rf "$crate"
mkdir -p "$crate" target/gem
# What cargo reads to build the extension: both manifests, the lock file, and
# every target the root manifest declares (a missing one is an error).
git ls-files -z -- Cargo.toml Cargo.lock README.md LICENSE* src benches tests examples \
    bindings/ruby/Cargo.toml bindings/ruby/src |
  xargs -0 cp --parents -t "$crate"
(cd bindings/ruby && gem build --quiet tasker_core.gemspec --output ../../target/gem/tasker_core.gem) >/dev/null
version=$(ruby -e 'print Gem::Specification.load("bindings/ruby/tasker_core.gemspec").version')
mv target/gem/tasker_core.gem "target/gem/tasker_core-$version.gem"
rm -rf "$crate"
echo "built target/gem/tasker_core-$version.gem"
