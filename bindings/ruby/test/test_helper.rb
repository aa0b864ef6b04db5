# frozen_string_literal: true

# Shared setup of the Ruby suite: services on this machine's PostgreSQL and
# RabbitMQ (override with TASKER_TEST_DATABASE_URL / TASKER_TEST_AMQP_URL),
# queue names unique to this run. A missing service fails loudly, naming it.
require "minitest/autorun"
require "securerandom"
require "timeout"

# TASKER_CORE_GEM=1: test the installed gem (scripts/test.sh installs it
# into a temporary GEM_HOME); otherwise this checkout's lib/, with the
# extension scripts/build-ruby-ext.sh put there.
LIB_DIR = File.expand_path("../lib", __dir__)
$LOAD_PATH.unshift LIB_DIR unless ENV["TASKER_CORE_GEM"] == "1"
require "tasker_core"
if ENV["TASKER_CORE_GEM"] == "1" && !Gem.loaded_specs.key?("tasker_core")
  abort "TASKER_CORE_GEM=1, but tasker_core was not loaded from an installed gem"
end

module TestSupport
  REPO = File.expand_path("../../..", __dir__)
  CONFIG_DIR = File.join(REPO, "config")
  PROVIDERS = %i[in_memory pgmq rabbitmq].freeze
  DATABASE_URL = ENV.fetch("TASKER_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
  AMQP_URL = ENV.fetch("TASKER_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
  # Other engineers run suites on the same servers: every queue name carries
  # this run's tag. Names stay within 47 bytes with the "_dlq" suffix.
  RUN = "rb#{SecureRandom.hex(4)}"
  SEQUENCE = Queue.new.tap { |q| (1..100_000).each { |i| q << i } }

  Services = TaskerCore::Services

  module_function

  def unique_queue(tag)
    "#{RUN}_#{SEQUENCE.pop}_#{tag[0, 18]}"
  end

  # The suites' configuration: config/messaging.toml, this machine's servers,
  # small limits so dead-letter cases are quick.
  def overrides(**queues)
    {
      pgmq: { database_url: DATABASE_URL, pool_size: 8 },
      rabbitmq: { url: AMQP_URL, prefetch_count: 50 },
      queues: { max_receive_count: 3, max_message_bytes: 4096, wait_poll_interval_ms: 200 }.merge(queues)
    }
  end

  def connect(provider, **queues)
    Services::MessageServiceFactory.create(
      provider: provider, config_file: File.join(CONFIG_DIR, "messaging.toml"), **overrides(**queues)
    )
  rescue Services::MessagingError => e
    server = { pgmq: "PostgreSQL at #{DATABASE_URL}", rabbitmq: "RabbitMQ at #{AMQP_URL}" }.fetch(provider, provider)
    raise "#{server} is not usable: #{e.class}: #{e.message}. Start it (scripts/test.sh does) and rerun."
  end

  SHARED = {}
  SHARED_LOCK = Mutex.new

  # One service per provider for the whole process.
  def service(provider)
    SHARED_LOCK.synchronize { SHARED[provider] ||= connect(provider) }
  end

  def step
    TaskerCore::Types::SimpleStepMessage.new(task_uuid: SecureRandom.uuid, step_uuid: SecureRandom.uuid)
  end

  def now
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  def elapsed
    started = now
    yield
    now - started
  end
end
