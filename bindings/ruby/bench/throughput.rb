# frozen_string_literal: true

# Ruby send + receive + delete against the same workload in Rust, on the same
# backend in the same process, in alternating blocks (the order swapped every
# round) so that a noisy machine hits both alike. Also the cost of one
# Ruby -> Rust call on in-memory. Prints the BENCHMARKS.md tables.
#
#   bash scripts/build-ruby-ext.sh
#   ruby bindings/ruby/bench/throughput.rb [rounds]      # default 7 rounds
#
# Per block: N messages sent one by one (a SimpleStepMessage), then received
# in batches of 10 (30 s leases) and deleted one by one. The Rust side
# (TaskerCore::Native.rust_cycle) does exactly that with the library's typed
# SimpleStepMessage and no crossing per call; the Ruby side goes through
# MessageService (JSON in Ruby, one GVL-releasing call per operation).
$LOAD_PATH.unshift File.expand_path("../lib", __dir__)
require "tasker_core"
require "securerandom"

ROUNDS = Integer(ARGV.fetch(0, 7))
BATCH = 10
MESSAGES = { in_memory: 5_000, pgmq: 500, rabbitmq: 1_000 }.freeze
CONFIG = File.expand_path("../../../config/messaging.toml", __dir__)
DATABASE_URL = ENV.fetch("TASKER_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
Step = TaskerCore::Types::SimpleStepMessage

def now = Process.clock_gettime(Process::CLOCK_MONOTONIC)

def ruby_cycle(service, queue, step, count)
  started = now
  count.times { service.send_message(queue, step) }
  left = count
  while left.positive?
    got = service.receive_messages(queue, max_messages: BATCH, visibility_timeout: 30)
    raise "#{left} messages missing from #{queue}" if got.empty?

    got.each { |m| service.delete_message(queue, m[:receipt_handle]) }
    left -= got.size
  end
  now - started
end

def median(values) = values.sort[values.size / 2]

rows = []
crossing = nil
MESSAGES.each do |provider, count|
  service = TaskerCore::Services::MessageServiceFactory.create(
    provider: provider, config_file: CONFIG, pgmq: { database_url: DATABASE_URL, pool_size: 4 }
  )
  queue = "rb_bench_#{SecureRandom.hex(4)}"
  service.create_queue(queue)
  step = Step.new(task_uuid: SecureRandom.uuid, step_uuid: SecureRandom.uuid)
  body = JSON.generate(step.to_h)
  ruby_cycle(service, queue, step, count / 5) # warm-up: connections, JIT-free paths, allocations
  TaskerCore::Native.rust_cycle(service.native, queue, body, count / 5, BATCH)
  ruby_times = []
  rust_times = []
  ROUNDS.times do |round|
    blocks = [
      -> { ruby_times << ruby_cycle(service, queue, step, count) },
      -> { rust_times << TaskerCore::Native.rust_cycle(service.native, queue, body, count, BATCH) }
    ]
    (round.even? ? blocks : blocks.reverse).each(&:call)
  end
  ratios = ruby_times.zip(rust_times).map { |ruby, rust| rust / ruby }
  rows << [provider, count, count / median(rust_times), count / median(ruby_times), median(ratios), ratios.minmax,
           (median(ruby_times) - median(rust_times)) / count]

  next unless provider == :in_memory

  calls = 100_000
  native = service.native
  call_times = []
  rust_call_times = []
  no_gvl_times = []
  ROUNDS.times do
    started = now
    calls.times { native.health_check }
    call_times << (now - started)
    rust_call_times << TaskerCore::Native.rust_health(native, calls)
    started = now
    calls.times { native.provider }
    no_gvl_times << (now - started)
  end
  # Ruby-side work per message that Rust does not do: the JSON both ways.
  json_times = Array.new(ROUNDS) do
    started = now
    calls.times { JSON.parse(JSON.generate(step.to_h), symbolize_names: true) }
    now - started
  end
  crossing = [median(call_times) / calls, median(rust_call_times) / calls, median(no_gvl_times) / calls,
              median(json_times) / calls]
ensure
  service&.delete_queue(queue) if queue
end

us = ->(seconds) { format("%.2f µs", seconds * 1e6) }
puts "#{ROUNDS} rounds, ruby #{RUBY_VERSION}, batch #{BATCH}; median of rounds (ratio: per-round Ruby/Rust rate)"
puts
puts "| provider | messages per block | Rust msg/s | Ruby msg/s | Ruby / Rust (range) | Ruby minus Rust per message |"
puts "| --- | ---: | ---: | ---: | ---: | ---: |"
rows.each do |provider, count, rust, ruby, ratio, (low, high), extra|
  puts format("| %s | %d | %.0f | %.0f | %.2fx (%.2f-%.2f) | %s |", provider, count, rust, ruby, ratio, low, high,
              us.(extra))
end
puts "(the last column is meaningful where the run is not server-bound: in-memory)"
if crossing
  call, rust_call, plain, json = crossing
  puts
  puts "| in-memory call | time per call |"
  puts "| --- | ---: |"
  puts "| `health_check` from Ruby (GVL released, runtime block_on) | #{us.(call)} |"
  puts "| `health_check` in Rust (same backend, no crossing) | #{us.(rust_call)} |"
  puts "| the crossing: Ruby minus Rust | #{us.(call - rust_call)} |"
  puts "| `provider` from Ruby (a method call that keeps the GVL) | #{us.(plain)} |"
  puts "| Ruby JSON for one step, `to_h` + generate + parse (no call) | #{us.(json)} |"
end
