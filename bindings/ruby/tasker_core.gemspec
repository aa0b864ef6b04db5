# frozen_string_literal: true

# The tasker_core gem: TaskerCore::Services over the tasker-messaging Rust
# library, compiled at install time by ext/tasker_core/extconf.rb with cargo.
#
# From a checkout, Bundler can use this directory as it is
# (`gem "tasker_core", path: "..."`): the extension then builds from the
# checkout's crate. A packaged gem carries the crate's sources in
# ext/tasker_core/crate, which scripts/build-gem.sh copies there before it
# runs `gem build`.
Gem::Specification.new do |spec|
  spec.name = "tasker_core"
  spec.version = "0.1.0"
  spec.summary = "Tasker's message queues (PGMQ, RabbitMQ, in-memory) from Ruby, on the tasker-messaging Rust library"
  spec.description = <<~TEXT
    TaskerCore::Services::MessageService: one queue API over PGMQ, RabbitMQ
    and an in-memory queue, with at-least-once delivery, leases and
    dead-lettering. Every call runs in the tasker-messaging Rust library
    through a native extension, built with cargo when the gem is installed.
  TEXT
  spec.authors = ["The tasker-messaging developers"]
  spec.licenses = ["MIT", "Apache-2.0"]
  spec.homepage = "https://github.com/tasker-systems/tasker-messaging"

  # Ruby 3.1 (Debian 12's) or later; building needs Rust 1.85 or later
  # (cargo on PATH, or CARGO), ruby-dev and libclang (bindgen, for magnus).
  spec.required_ruby_version = ">= 3.1"
  spec.requirements << "Rust 1.85 or later (cargo), ruby headers (ruby-dev) and libclang"

  spec.files = Dir.chdir(__dir__) do
    Dir["lib/**/*.rb", "ext/tasker_core/extconf.rb", "ext/tasker_core/crate/**/*"]
      .select { |path| File.file?(path) }
  end
  spec.require_paths = ["lib"]
  spec.extensions = ["ext/tasker_core/extconf.rb"]
  spec.metadata["rubygems_mfa_required"] = "true"
end
