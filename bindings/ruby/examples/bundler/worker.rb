# frozen_string_literal: true

# The smallest Tasker worker on PGMQ, through Bundler, from the repository root:
#
#   bash scripts/build-ruby-ext.sh               # Bundler never compiles a path gem's extension
#   cd bindings/ruby/examples/bundler
#   bundle install --local
#   bundle exec ruby worker.rb                   # TASKER_DATABASE_URL overrides the database
#
# It enqueues three steps, then works them: wait for a step, run it, delete
# it. Exits non-zero unless every step was worked exactly once.
require "securerandom"
require "tasker_core"

database_url = ENV.fetch("TASKER_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
queue = "bundler_example_#{SecureRandom.hex(4)}"
steps = Array.new(3) { TaskerCore::Types::SimpleStepMessage.new(task_uuid: SecureRandom.uuid, step_uuid: SecureRandom.uuid) }

service = TaskerCore::Services::MessageServiceFactory.create(provider: :pgmq, pgmq: { database_url: database_url })
begin
  service.create_queue(queue)
  service.send_batch(queue, steps)
  worked = []
  while worked.size < steps.size
    batch = service.receive_messages_wait(queue, max_messages: 10, visibility_timeout: 30, wait: 5)
    abort "no step arrived within 5 s" if batch.empty?
    batch.each do |delivery|
      worked << delivery[:message][:step_uuid] # the step's work would run here
      service.delete_message(queue, delivery[:receipt_handle])
    end
  end
  expected = steps.map(&:step_uuid).sort
  abort "worked #{worked.sort} instead of #{expected}" unless worked.sort == expected
  puts "worked #{worked.size} steps on #{service.provider} (tasker_core #{Gem.loaded_specs['tasker_core'].version})"
ensure
  service.delete_queue(queue)
  service.close
end
