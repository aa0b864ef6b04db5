# frozen_string_literal: true

# The Ruby <-> Rust boundary: the GVL is released while a call waits, Ruby
# interrupts end a waiting call, and a Rust panic arrives as an exception.
require_relative "test_helper"

class BoundaryTest < Minitest::Test
  parallelize_me!
  Services = TaskerCore::Services

  def service
    TestSupport.service(:in_memory)
  end

  def with_queue
    queue = TestSupport.unique_queue("boundary")
    service.create_queue(queue)
    yield queue
  ensure
    service.delete_queue(queue)
  end

  def test_other_threads_run_while_a_call_waits
    with_queue do |queue|
      waiter = Thread.new { service.receive_messages_wait(queue, wait: 1) }
      sleep 0.05 until waiter.status == "sleep" || !waiter.alive?
      spins = 0
      started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      spins += 1 while waiter.alive? && Process.clock_gettime(Process::CLOCK_MONOTONIC) - started < 3
      assert_equal [], waiter.value
      # With the GVL held by the waiter, this thread would not run for ~1 s.
      assert_operator spins, :>, 10_000, "the main thread ran while the call waited"
    end
  end

  def test_thread_raise_and_timeout_end_a_waiting_call
    with_queue do |queue|
      took = TestSupport.elapsed do
        assert_raises(Timeout::Error) { Timeout.timeout(0.3) { service.receive_messages_wait(queue, wait: 30) } }
      end
      assert_operator took, :<, 3

      waiter = Thread.new { service.receive_messages_wait(queue, wait: 30) }
      waiter.report_on_exception = false
      sleep 0.2
      took = TestSupport.elapsed do
        waiter.raise(ArgumentError, "stop")
        assert_raises(ArgumentError) { waiter.join }
      end
      assert_operator took, :<, 3
      service.send_message(queue, { after: "interrupt" })
      assert_equal 1, service.receive_messages_wait(queue, wait: 2).size, "the service still works"
    end
  end

  # A lone main thread takes Ruby's async-signal-safe unblocking path.
  def test_ctrl_c_ends_a_waiting_call_on_a_lone_main_thread
    script = <<~RUBY
      $LOAD_PATH.unshift #{File.expand_path("../lib", __dir__).inspect}
      require "tasker_core"
      service = TaskerCore::Services::MessageServiceFactory.create(provider: :in_memory)
      service.create_queue("lonely")
      $stdout.puts "waiting"; $stdout.flush
      begin
        service.receive_messages_wait("lonely", wait: 30)
        puts "returned"
      rescue Interrupt
        puts "interrupted"
      end
    RUBY
    IO.popen([RbConfig.ruby, "-e", script], err: File::NULL) do |child|
      assert_equal "waiting\n", child.gets
      sleep 0.2
      took = TestSupport.elapsed do
        Process.kill(:INT, child.pid)
        assert_equal "interrupted\n", child.gets
      end
      assert_operator took, :<, 3
    end
  end

  def test_rust_panics_arrive_as_internal_error
    [false, true].each do |without_gvl|
      error = assert_raises(Services::InternalError) { TaskerCore::Native.panic_probe(without_gvl) }
      assert_includes error.message, "panic_probe"
      refute error.transient?
    end
    assert service.healthy?, "the process goes on"
  end

  def test_errors_mirror_messaging_error
    %w[ConnectionError QueueNotFound InvalidQueueName InvalidArgument SerializationError InvalidReceipt
       LeaseExpired MessageTooLarge CircuitOpen ConfigurationError ProviderError].each do |name|
      assert_operator Services.const_get(name), :<, Services::MessagingError
    end
    assert Services::ConnectionError.new("down", true).transient?
    refute Services::QueueNotFound.new("gone").transient?
  end

  def test_connection_errors_are_transient
    error = assert_raises(Services::ConnectionError) do
      Services::MessageServiceFactory.create(
        provider: :pgmq, config_file: File.join(TestSupport::CONFIG_DIR, "messaging.toml"),
        pgmq: { database_url: "postgres://postgres:secret@127.0.0.1:1/test", connection_timeout_ms: 500 },
        retry_policy: { max_retries: 0 }
      )
    end
    assert error.transient?
    refute_includes error.message, "secret", "passwords never appear in errors"
  end
end
