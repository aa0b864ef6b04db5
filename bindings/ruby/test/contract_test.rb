# frozen_string_literal: true

# The contract's core cases (docs/CONTRACT.md) through the Ruby API, on every
# provider: the same behaviour the Rust conformance suite checks, seen from Ruby.
require_relative "test_helper"

module ContractCases
  Services = TaskerCore::Services
  Step = TaskerCore::Types::SimpleStepMessage

  def service
    TestSupport.service(self.class::PROVIDER)
  end

  def with_queue(tag)
    queue = TestSupport.unique_queue(tag)
    service.create_queue(queue)
    yield queue
  ensure
    service.delete_queue(queue) if queue
  end

  # Receives exactly one message, waiting a little for it (a RabbitMQ release
  # reaches the queue asynchronously).
  def receive_one(queue, visibility_timeout: 30)
    got = service.receive_messages_wait(queue, max_messages: 1, visibility_timeout: visibility_timeout, wait: 5)
    assert_equal 1, got.size, "expected a message on #{queue}"
    got.first
  end

  def test_create_send_receive_delete
    with_queue("basic") do |queue|
      assert service.create_queue(queue), "create_queue is idempotent"
      step = TestSupport.step
      id = service.send_message(queue, step)
      assert_kind_of String, id

      got = service.receive_messages(queue, max_messages: 10, visibility_timeout: 30)
      assert_equal 1, got.size
      msg = got.first
      assert_equal %i[receipt_handle message metadata], msg.keys
      assert_equal step, Step.from_hash(msg[:message])
      meta = msg[:metadata]
      assert_equal %i[message_id enqueued_at receive_count visibility_timeout_expires headers], meta.keys
      assert_equal({}, meta[:headers])
      assert_equal id, meta[:message_id]
      assert_equal 1, meta[:receive_count]
      assert_kind_of Time, meta[:enqueued_at]
      assert_in_delta Time.now + 30, meta[:visibility_timeout_expires], 5
      assert_equal true, service.delete_message(queue, msg[:receipt_handle])
      assert_empty service.receive_messages(queue)
      assert_equal 0, service.queue_stats(queue)[:message_count]
    end
  end

  def test_hash_messages_round_trip
    with_queue("hash") do |queue|
      sent = { "kind" => "note", "n" => 7, "tags" => ["a", nil, 1.5], "nested" => { "ok" => true } }
      service.send_message(queue, sent)
      msg = receive_one(queue)
      assert_equal({ kind: "note", n: 7, tags: ["a", nil, 1.5], nested: { ok: true } }, msg[:message])
      service.delete_message(queue, msg[:receipt_handle])
    end
  end

  # C34, C38: a delayed send (one or a batch) is received only once due,
  # and its headers come back in metadata[:headers].
  def test_delay_and_headers
    with_queue("delay_headers") do |queue|
      headers = { "tenant" => "acme", correlation: 42 }
      sent_at = TestSupport.now
      service.send_message(queue, { n: 1 }, delay: 2, headers: headers)
      service.send_batch(queue, [{ n: 2 }, { n: 3 }], delay: 2.0, headers: { "batch" => "yes" })
      assert_empty service.receive_messages(queue)
      got = []
      deadline = TestSupport.now + 10
      while got.size < 3
        flunk "#{got.size} of 3 delayed messages arrived within 10 s" if TestSupport.now > deadline
        got.concat(service.receive_messages(queue, max_messages: 10))
        sleep 0.05
      end
      assert_operator TestSupport.now - sent_at, :>=, 1.6
      assert_equal [1, 2, 3], got.map { |m| m[:message][:n] }
      assert_equal({ "tenant" => "acme", "correlation" => "42" }, got[0][:metadata][:headers])
      assert_equal [{ "batch" => "yes" }] * 2, got[1..].map { |m| m[:metadata][:headers] }
      got.each { |m| service.delete_message(queue, m[:receipt_handle]) }
      assert_raises(Services::InvalidArgument) { service.send_message(queue, { n: 4 }, headers: { "x-mine" => "1" }) }
      assert_raises(Services::InvalidArgument) { service.send_message(queue, { n: 5 }, delay: -1) }
    end
  end

  # Trace context: the W3C headers the opentelemetry gem's propagator
  # writes are accepted on send and come back unchanged, for
  # OpenTelemetry.propagation.extract on the worker's side.
  def test_trace_context_headers_round_trip
    with_queue("trace_context") do |queue|
      carrier = {
        "traceparent" => "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate" => "congo=t61rcWkgMzE"
      }
      service.send_message(queue, { n: 1 }, headers: carrier)
      msg = receive_one(queue)
      assert_equal carrier, msg[:metadata][:headers]
      service.delete_message(queue, msg[:receipt_handle])
    end
  end

  def test_batch_keeps_order
    with_queue("batch") do |queue|
      assert_equal [], service.send_batch(queue, [])
      ids = service.send_batch(queue, (0...5).map { |n| { n: n } })
      assert_equal 5, ids.uniq.size
      got = []
      deadline = TestSupport.now + 15
      while got.size < 5
        flunk "#{got.size} of 5 messages arrived within 15 s" if TestSupport.now > deadline
        got.concat(service.receive_messages_wait(queue, max_messages: 10, wait: 2))
      end
      assert_equal (0...5).to_a, got.map { |m| m[:message][:n] }
      assert_equal ids, got.map { |m| m[:metadata][:message_id] }
      got.each { |m| service.delete_message(queue, m[:receipt_handle]) }
    end
  end

  def test_lease_expiry_redelivers_and_stale_receipt_is_lease_expired
    with_queue("lease") do |queue|
      service.send_message(queue, TestSupport.step)
      first = receive_one(queue, visibility_timeout: 1)
      assert_empty service.receive_messages(queue), "a leased message is hidden"
      second = receive_one(queue, visibility_timeout: 30) # waits for the lease to end
      assert_equal first[:metadata][:message_id], second[:metadata][:message_id]
      assert_equal 2, second[:metadata][:receive_count]

      error = assert_raises(Services::LeaseExpired) { service.delete_message(queue, first[:receipt_handle]) }
      refute error.transient?
      assert_kind_of Services::MessagingError, error
      assert_raises(Services::LeaseExpired) { service.change_message_visibility(queue, first[:receipt_handle], 0) }
      assert service.delete_message(queue, second[:receipt_handle]), "the live lease is untouched"
      assert_raises(Services::LeaseExpired) { service.delete_message(queue, second[:receipt_handle]) }
    end
  end

  def test_visibility_zero_releases_at_once
    with_queue("release") do |queue|
      service.send_message(queue, TestSupport.step)
      first = receive_one(queue)
      assert service.change_message_visibility(queue, first[:receipt_handle], 0)
      again = receive_one(queue)
      assert_equal first[:metadata][:message_id], again[:metadata][:message_id]
      assert_equal 2, again[:metadata][:receive_count]
      service.delete_message(queue, again[:receipt_handle])
    end
  end

  def test_dead_letter_after_max_receive_count
    with_queue("dead") do |queue|
      doomed = TestSupport.step
      service.send_message(queue, doomed)
      max = service.max_receive_count
      (1..max).each do |attempt|
        msg = receive_one(queue)
        assert_equal attempt, msg[:metadata][:receive_count]
        service.change_message_visibility(queue, msg[:receipt_handle], 0)
      end
      healthy = TestSupport.step
      service.send_message(queue, healthy)
      nxt = receive_one(queue)
      assert_equal healthy, Step.from_hash(nxt[:message]), "the exhausted message is not returned"
      assert_empty service.receive_messages_wait(queue, wait: 0.5)
      service.delete_message(queue, nxt[:receipt_handle])

      assert_equal 1, service.queue_stats(queue)[:dead_letter_count]
      dead = receive_one("#{queue}_dlq")
      assert_equal doomed, Step.from_hash(dead[:message]), "the dead letter keeps its body"
      service.delete_message("#{queue}_dlq", dead[:receipt_handle])
    end
  end

  def test_stats_and_purge
    with_queue("stats") do |queue|
      service.send_batch(queue, Array.new(3) { TestSupport.step })
      leased = receive_one(queue)
      stats = service.queue_stats(queue)
      assert_equal queue, stats[:queue_name]
      assert_equal 2, stats[:message_count]
      if service.capabilities[:exact_in_flight]
        assert_equal 1, stats[:in_flight_count]
      else
        assert_nil stats[:in_flight_count]
      end
      assert_equal 2, service.purge_queue(queue)
      assert_equal 0, service.queue_stats(queue)[:message_count]
      assert service.delete_message(queue, leased[:receipt_handle]), "purge leaves leased messages"
    end
  end

  def test_bad_queue_name_and_missing_queue_raise_their_own_errors
    error = assert_raises(Services::InvalidQueueName) { service.send_message("Not-Valid", { a: 1 }) }
    refute error.transient?
    assert_raises(Services::InvalidQueueName) { service.create_queue("") }
    missing = TestSupport.unique_queue("never_made")
    error = assert_raises(Services::QueueNotFound) { service.send_message(missing, { a: 1 }) }
    refute error.transient?
    assert_includes error.message, missing
    assert_raises(Services::QueueNotFound) { service.receive_messages(missing) }
    assert_raises(Services::QueueNotFound) { service.queue_stats(missing) }
  end

  def test_argument_and_receipt_errors
    with_queue("args") do |queue|
      assert_raises(Services::InvalidArgument) { service.receive_messages(queue, max_messages: 0) }
      assert_raises(Services::InvalidArgument) { service.receive_messages(queue, visibility_timeout: -1) }
      assert_raises(Services::InvalidReceipt) { service.delete_message(queue, "not-a-receipt") }
      assert_raises(Services::MessageTooLarge) { service.send_message(queue, { big: "x" * 5000 }) }
      assert_raises(Services::SerializationError) { service.send_message(queue, { bad: Float::NAN }) }
      assert_equal 0, service.queue_stats(queue)[:message_count], "nothing was sent"
    end
  end

  # C24 from Ruby: with a fallback poll far longer than the test, only the
  # wake-up can end the wait, within 0.2 s of the send returning (measured
  # once more before failing: a loaded machine can stall one measurement).
  def test_waiting_receive_wakes_on_send
    # A service of its own (in memory, its own queues too): sends and waits on it.
    waiting = TestSupport.connect(self.class::PROVIDER, wait_poll_interval_ms: 600_000)
    queue = TestSupport.unique_queue("wait")
    waiting.create_queue(queue)
    assert_empty waiting.receive_messages_wait(queue, wait: 0.3), "an empty wait returns empty"
    latencies = []
    2.times do
      latencies << wake_latency(waiting, queue)
      break if latencies.last < 0.2
    end
    assert_operator latencies.last, :<, 0.2, "send-to-return #{latencies.map { |l| l.round(3) }} s"
  ensure
    waiting&.delete_queue(queue) if queue
  end

  # Seconds from a send returning to a parked wait returning its message.
  def wake_latency(waiting, queue)
    waiter = Thread.new do
      got = waiting.receive_messages_wait(queue, wait: 30)
      [got, TestSupport.now]
    end
    deadline = TestSupport.now + 5
    sleep 0.01 until waiter.status == "sleep" || !waiter.alive? || TestSupport.now > deadline
    sleep 0.3 # parked in the wait, past its first look at the queue
    assert waiter.alive?, "an empty queue ended the wait"
    waiting.send_message(queue, TestSupport.step)
    sent = TestSupport.now
    got, returned = waiter.value
    assert_equal 1, got.size
    waiting.delete_message(queue, got.first[:receipt_handle])
    returned - sent
  end

  # C33 from Ruby: #close ends a waiting receive in another thread with
  # Closed, is idempotent, and every later call raises Closed (never
  # transient). Another service then gets the kept message back (at once on
  # RabbitMQ, when its 2 s lease ends on PGMQ) and never the deleted one.
  def test_close_keeps_deletes_and_refuses_later_calls
    closing = TestSupport.connect(self.class::PROVIDER)
    queue = TestSupport.unique_queue("close")
    closing.create_queue(queue)
    sent = [TestSupport.step, TestSupport.step]
    closing.send_batch(queue, sent)
    got = []
    deadline = TestSupport.now + 5
    while got.size < 2 && TestSupport.now < deadline
      got.concat(closing.receive_messages(queue, max_messages: 2 - got.size, visibility_timeout: 2))
    end
    assert_equal 2, got.size
    deleted, kept = got
    assert_equal true, closing.delete_message(queue, deleted[:receipt_handle])

    waiter = Thread.new do
      closing.receive_messages_wait(queue, wait: 30)
    rescue Services::MessagingError => e
      e
    end
    sleep 0.3 # parked in the wait
    refute closing.closed?
    started = TestSupport.now
    assert_equal true, closing.close
    assert waiter.join(5), "the waiting receive outlived close"
    assert_kind_of Services::Closed, waiter.value
    assert_operator TestSupport.now - started, :<, 5
    assert_equal true, closing.close, "close is idempotent"
    assert closing.closed?

    calls = {
      healthy?: -> { closing.healthy? },
      send_message: -> { closing.send_message(queue, TestSupport.step) },
      receive_messages: -> { closing.receive_messages(queue) },
      delete_message: -> { closing.delete_message(queue, kept[:receipt_handle]) },
      queue_stats: -> { closing.queue_stats(queue) },
    }
    calls.each do |name, call|
      error = assert_raises(Services::Closed, "#{name} after close") { call.call }
      refute error.transient?, "#{name}: Closed is not transient"
    end
    # In memory the queues lived in the closed service: nothing left to look at.
    return if self.class::PROVIDER == :in_memory

    back = []
    deadline = TestSupport.now + 4
    while TestSupport.now < deadline
      back.concat(service.receive_messages(queue, max_messages: 2, visibility_timeout: 30))
      sleep 0.05
    end
    assert_equal [Step.from_hash(kept[:message])], back.map { |m| Step.from_hash(m[:message]) }
  ensure
    service.delete_queue(queue) if queue && self.class::PROVIDER != :in_memory
  end

  # C32 from Ruby: one outcome per receipt, in order; a receipt given twice
  # is LeaseExpired the second time, a malformed one InvalidReceipt; nothing
  # is raised for them.
  def test_delete_messages_returns_one_outcome_per_receipt
    with_queue("delmany") do |queue|
      service.send_batch(queue, [TestSupport.step, TestSupport.step])
      got = []
      deadline = TestSupport.now + 5
      while got.size < 2 && TestSupport.now < deadline
        got.concat(service.receive_messages(queue, max_messages: 2 - got.size, visibility_timeout: 30))
      end
      assert_equal 2, got.size
      receipts = got.map { |m| m[:receipt_handle] }
      outcomes = service.delete_messages(queue, receipts + [receipts.first, "not-a-receipt"])
      assert_equal [true, true], outcomes.first(2)
      assert_kind_of Services::LeaseExpired, outcomes[2]
      assert_kind_of Services::InvalidReceipt, outcomes[3]
      assert_equal [], service.delete_messages(queue, [])
      assert_empty service.receive_messages(queue)
    end
  end

  # MessageServiceFactory.open with a block closes the service when the
  # block ends, also by an exception, and returns the block's value.
  def test_open_with_a_block_closes_the_service
    kept = nil
    value = Services::MessageServiceFactory.open(
      provider: self.class::PROVIDER, **TestSupport.overrides
    ) do |opened|
      kept = opened
      refute opened.closed?
      opened.healthy? && :done
    end
    assert_equal :done, value
    assert kept.closed?, "open closed the service after the block"
    assert_raises(ArgumentError) do
      Services::MessageServiceFactory.open(provider: self.class::PROVIDER, **TestSupport.overrides) do |opened|
        kept = opened
        raise ArgumentError, "the block failed"
      end
    end
    assert kept.closed?, "open closed the service after the block raised"
  end

  def test_healthy_and_provider
    assert_equal true, service.healthy?
    assert_equal self.class::PROVIDER, service.provider
  end
end

TestSupport::PROVIDERS.each do |provider|
  klass = Class.new(Minitest::Test) do
    const_set(:PROVIDER, provider)
    include ContractCases
    parallelize_me!
  end
  name = provider.to_s.split("_").map(&:capitalize).join
  Object.const_set("#{name}ContractTest", klass)
end
