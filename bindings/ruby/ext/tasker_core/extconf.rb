# frozen_string_literal: true

# Builds the tasker_core native extension with cargo and writes the Makefile
# RubyGems (or Bundler) runs: `make` compiles the tasker-messaging-ruby
# cdylib, `make install` puts it where `require "tasker_core"` finds it
# (tasker_core/tasker_messaging_ruby.so). No rb_sys, no mkmf compilation: the
# crate builds itself.
#
# Environment:
#   CARGO                      the cargo to run (default: cargo on PATH)
#   CARGO_TARGET_DIR           build there and keep it (default: a target
#                              directory here, removed after install)
#   TASKER_CORE_CARGO_PROFILE  release (default) or dev
#   CARGO_NET_OFFLINE=true     build from cargo's local cache only
require "rbconfig"
require "shellwords"

here = __dir__
# A packaged gem carries the crate; a checkout used as a Bundler path has it
# four levels up (bindings/ruby/ext/tasker_core).
crate = [File.join(here, "crate"), File.expand_path("../../../..", here)]
        .find { |dir| File.file?(File.join(dir, "bindings", "ruby", "Cargo.toml")) }
unless crate
  abort "tasker_core: the Rust sources are missing from #{here}/crate; " \
        "build the gem with scripts/build-gem.sh, which copies them there"
end

cargo = ENV.fetch("CARGO", "cargo")
unless system(cargo, "--version", out: File::NULL, err: File::NULL)
  abort "tasker_core: #{cargo} was not found; install Rust 1.85 or later (https://rustup.rs) " \
        "or set CARGO"
end

profile = ENV.fetch("TASKER_CORE_CARGO_PROFILE", "release")
unless %w[release dev].include?(profile)
  abort "tasker_core: TASKER_CORE_CARGO_PROFILE must be release or dev, not #{profile.inspect}"
end
kept_target = ENV.key?("CARGO_TARGET_DIR")
# RubyGems runs this from a directory of its own: a relative path would land
# somewhere the caller never meant.
if kept_target && !File.absolute_path?(ENV.fetch("CARGO_TARGET_DIR"))
  abort "tasker_core: CARGO_TARGET_DIR must be an absolute path, not #{ENV.fetch('CARGO_TARGET_DIR').inspect}"
end
target = kept_target ? ENV.fetch("CARGO_TARGET_DIR") : File.join(Dir.pwd, "target")
out_dir = profile == "dev" ? "debug" : "release"
library = "libtasker_messaging_ruby.#{RbConfig::CONFIG['host_os'].match?(/darwin/) ? 'dylib' : 'so'}"
built = File.join(target, out_dir, library)
extension = "tasker_messaging_ruby.#{RbConfig::CONFIG['DLEXT']}"
build = [cargo, "build", "--locked", "--profile", profile,
         "--manifest-path", File.join(crate, "bindings", "ruby", "Cargo.toml"),
         "--target-dir", target]

File.write("Makefile", <<~MAKE)
  # Written by extconf.rb: cargo builds, make copies.
  sitearchdir ?= #{RbConfig::CONFIG['sitearchdir']}

  all: #{extension}

  #{extension}: FORCE
  \t#{build.shelljoin}#{kept_target ? '' : " || { rm -rf #{target.shellescape}; exit 1; }"}
  \tcp #{built.shellescape} #{extension}

  install: #{extension}
  \tmkdir -p "$(DESTDIR)$(sitearchdir)/tasker_core"
  \tcp #{extension} "$(DESTDIR)$(sitearchdir)/tasker_core/#{extension}"
  \trm -f #{extension}
  #{kept_target ? '' : "\trm -rf #{target.shellescape}"}

  clean:
  \trm -f #{extension}

  FORCE:
  .PHONY: all install clean FORCE
MAKE
