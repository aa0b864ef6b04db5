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

  # Issue 26 bug 8 from Ruby: a waiting receive ended by Timeout at a random
  # moment (mid consume, say) strands nothing. Every message sent afterwards
  # is receivable once the 1 s leases of anything a cut receive took are over.
  def test_waiting_receives_cut_at_random_strand_nothing
    %i[rabbitmq pgmq].each do |provider|
      service = TestSupport.service(provider)
      queue = TestSupport.unique_queue("cut_waits")
      service.create_queue(queue)
      begin
        cut = 0
        150.times do
          Timeout.timeout(rand(0.0005..0.02)) do
            service.receive_messages_wait(queue, max_messages: 5, visibility_timeout: 1, wait: 5)
          end
        rescue Timeout::Error
          cut += 1
        end
        assert_operator cut, :>, 100, "#{provider}: most receives were cut"
        sent = Array.new(100) { TestSupport.step }.each_slice(20).sum { |b| service.send_batch(queue, b).size }
        assert_equal 100, sent
        sleep 1.5 # any lease a cut receive took has ended
        seen = {}
        deadline = TestSupport.now + 10
        while seen.size < 100 && TestSupport.now < deadline
          got = service.receive_messages(queue, max_messages: 10, visibility_timeout: 30)
          sleep 0.05 if got.empty?
          got.each { |m| seen[m[:message]] = true }
        end
        assert_equal 100, seen.size, "#{provider}: receivable after #{cut} cut receives"
      ensure
        service.delete_queue(queue)
      end
    end
  end

  # A lone main thread takes Ruby's async-signal-safe unblocking path.
  def test_ctrl_c_ends_a_waiting_call_on_a_lone_main_thread
    script = <<~RUBY
      $LOAD_PATH.unshift #{LIB_DIR.inspect} unless ENV["TASKER_CORE_GEM"] == "1"
      require "tasker_core"
      # A shell that runs a job in the background without job control starts
      # it with SIGINT ignored, and Ruby keeps an inherited SIG_IGN.
      trap("INT", "DEFAULT")
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
       LeaseExpired MessageTooLarge CircuitOpen ConfigurationError TlsError ProviderError].each do |name|
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
