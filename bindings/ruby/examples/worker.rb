# frozen_string_literal: true

# The orchestrator's worker loop in Ruby, on the Rust library.
#
#   bash scripts/build-ruby-ext.sh
#   ruby bindings/ruby/examples/worker.rb                       # in-memory (config/messaging.toml)
#   ruby bindings/ruby/examples/worker.rb --config config/pgmq.toml
#   ruby bindings/ruby/examples/worker.rb --provider rabbitmq --config config/rabbitmq.toml
#
# It creates a queue per [queues] namespaces entry (initialize_service) and a
# results queue, enqueues --messages steps spread over the namespaces with
# send_batch, and runs --workers Ruby threads per namespace. Each worker waits
# for steps (receive_messages_wait), runs them (--work-ms), reports them on
# the results queue, then deletes them; a step it fails (--fail-rate) is not
# deleted, so it comes back when its lease ends and, after max_receive_count
# deliveries, sits in the dead-letter queue. The main thread reads the
# results until every step is accounted for and prints a summary. Ctrl-C
# stops it: steps in hand finish, nothing is lost.
$LOAD_PATH.unshift File.expand_path("../lib", __dir__)
require "tasker_core"
require "optparse"
require "securerandom"
require "set"

Services = TaskerCore::Services
Step = TaskerCore::Types::SimpleStepMessage

options = { messages: 1_000, workers: 2, work_ms: 0, fail_rate: 0.0, lease: 5, config: nil, provider: nil, pattern: nil }
OptionParser.new do |o|
  o.on("--messages N", Integer, "steps to enqueue (default 1000)") { |v| options[:messages] = v }
  o.on("--workers K", Integer, "worker threads per namespace (default 2)") { |v| options[:workers] = v }
  o.on("--work-ms MS", Integer, "time each step takes (default 0)") { |v| options[:work_ms] = v }
  o.on("--fail-rate P", Float, "share of steps that always fail (default 0)") { |v| options[:fail_rate] = v }
  o.on("--lease S", Integer, "visibility timeout in seconds (default 5)") { |v| options[:lease] = v }
  o.on("--config FILE", "config file (default: TASKER_MESSAGING_CONFIG or config/messaging.toml)") do |v|
    options[:config] = v
  end
  o.on("--provider NAME", %w[in_memory pgmq rabbitmq], "override the configured provider") do |v|
    options[:provider] = v.to_sym
  end
  o.on("--pattern P", "override queues.namespace_pattern, e.g. mine_{namespace}_queue") { |v| options[:pattern] = v }
end.parse!

overrides = options[:pattern] ? { queues: { namespace_pattern: options[:pattern] } } : {}
service = Services::MessageServiceFactory.create(provider: options[:provider], config_file: options[:config],
                                                 **overrides)
queues = service.initialize_service
abort "no [queues] namespaces configured" if queues.empty?
results = "worker_results_#{SecureRandom.hex(4)}" # this run's own
service.create_queue(results)
puts "provider #{service.provider}: #{queues.join(', ')}; #{options[:workers]} workers each"

# Enqueue: one task of --messages steps, round-robin over the namespaces.
task = SecureRandom.uuid
steps = Array.new(options[:messages]) { Step.new(task_uuid: task, step_uuid: SecureRandom.uuid) }
ours = steps.to_set(&:step_uuid) # queues may hold an earlier, interrupted run's steps too
failing = steps.select { rand < options[:fail_rate] }.to_set(&:step_uuid)
started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
steps.each_slice(100).with_index do |slice, i|
  service.send_batch(queues[i % queues.size], slice)
end

stop = false
trap("INT") { stop = true }
trap("TERM") { stop = true }

# The worker loop: wait for steps, run them, report, then delete (a crash
# between report and delete runs the step again: a duplicate, never a loss).
workers = queues.flat_map do |queue|
  Array.new(options[:workers]) do
    Thread.new do
      until stop
        received = service.receive_messages_wait(queue, max_messages: 10, visibility_timeout: options[:lease], wait: 1)
        received.each do |msg|
          step = Step.from_hash(msg[:message])
          sleep(options[:work_ms] / 1000.0) if options[:work_ms].positive?
          next if failing.include?(step.step_uuid) # not deleted: it comes back, then dead-letters

          service.send_message(results, { step_uuid: step.step_uuid, attempt: msg[:metadata][:receive_count] })
          service.delete_message(queue, msg[:receipt_handle])
        rescue Services::LeaseExpired
          # Took longer than the lease: another worker has it now.
        rescue Services::MessagingError => e
          raise unless e.transient?

          warn "worker: #{e.class}: #{e.message} (retrying)"
          sleep 0.1
        end
      end
    end
  end
end

# Read completions until every step that can complete has.
expected = steps.size - failing.size
completed = Hash.new(0)
last_report = 0
until stop || completed.size >= expected
  service.receive_messages_wait(results, max_messages: 100, wait: 1).each do |msg|
    completed[msg[:message][:step_uuid]] += 1 if ours.include?(msg[:message][:step_uuid])
    service.delete_message(results, msg[:receipt_handle])
  end
  now = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  if now - last_report >= 1
    puts format("%6.1f s  %d/%d steps completed", now - started, completed.size, expected)
    last_report = now
  end
end
elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
stop = true
workers.each(&:join)

duplicates = completed.values.sum - completed.size
puts format("sent %d, completed %d (%d duplicates), failing %d, %.1f s, %.0f steps/s",
            steps.size, completed.size, duplicates, failing.size, elapsed, completed.size / elapsed)
queues.each do |queue|
  stats = service.queue_stats(queue)
  puts "  #{queue}: ready #{stats[:message_count]}, in flight #{stats[:in_flight_count].inspect}, " \
       "dead letters #{stats[:dead_letter_count].inspect}"
end
service.delete_queue(results)
exit(completed.size >= expected ? 0 : 1)
