# frozen_string_literal: true

# Fork: a child that uses a service made before the fork gets a working
# reconnect (PGMQ, RabbitMQ) or a clear error (in-memory), never a hang.
require_relative "test_helper"

class ForkTest < Minitest::Test
  parallelize_me!
  Services = TaskerCore::Services
  CHILD_DEADLINE = 30 # seconds; a child still running then has hung

  # Runs the block in a forked child; returns its exit status and what it
  # wrote. A child that does not finish in time is killed and fails the test.
  def in_child(&block)
    reader, writer = IO.pipe
    pid = Process.fork do
      reader.close
      outcome = begin
        block.call.to_s
      rescue Exception => e # rubocop:disable Lint/RescueException
        "raised #{e.class}: #{e.message}"
      end
      writer.write(outcome)
      writer.close
      exit!(0)
    end
    writer.close
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + CHILD_DEADLINE
    until (status = Process.waitpid2(pid, Process::WNOHANG))
      if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
        Process.kill(:KILL, pid)
        Process.waitpid(pid)
        flunk "forked child hung for #{CHILD_DEADLINE} s"
      end
      sleep 0.05
    end
    [status[1], reader.read]
  ensure
    reader&.close
  end

  %i[pgmq rabbitmq].each do |provider|
    define_method("test_#{provider}_service_made_before_fork_reconnects_in_the_child") do
      service = TestSupport.connect(provider)
      queue = TestSupport.unique_queue("fork")
      service.create_queue(queue)
      service.send_message(queue, { from: "parent" })
      # A parent thread mid-call while the child is forked.
      idle = TestSupport.unique_queue("idle")
      service.create_queue(idle)
      busy = Thread.new { service.receive_messages_wait(idle, wait: 2) }
      sleep 0.2
      status, out = in_child do
        service.send_message(queue, { from: "child" })
        got = service.receive_messages_wait(queue, max_messages: 10, wait: 5)
        got += service.receive_messages_wait(queue, max_messages: 10, wait: 2) if got.size < 2
        got.each { |m| service.delete_message(queue, m[:receipt_handle]) }
        got.map { |m| m[:message][:from] }.sort.join(",")
      end
      assert status.success?, out
      assert_equal "child,parent", out
      busy.join
      # RabbitMQ acks are not confirmed: a child that exits at once may leave
      # its deletes unsent, and the broker redelivers (never loses) them.
      assert_equal 0, service.queue_stats(queue)[:message_count] if service.capabilities[:broker_confirmed_delete]
      assert service.healthy?, "the parent's service still works"
      service.create_queue(after = TestSupport.unique_queue("after_fork"))
      service.send_message(after, { from: "parent again" })
      assert_equal 1, service.receive_messages_wait(after, wait: 5).size
    ensure
      service&.delete_queue(queue) if queue
      service&.delete_queue(after) if after
      service&.delete_queue(idle) if idle
    end
  end

  # Workers forked from one parent (Puma, Unicorn) each reconnect with a
  # scope of their own: were two to share one, their RabbitMQ receipts would
  # be the same strings and one worker's receipt would settle another's
  # delivery.
  def test_rabbitmq_workers_forked_from_one_parent_issue_receipts_of_their_own
    service = TestSupport.connect(:rabbitmq)
    queue = TestSupport.unique_queue("fork_scope")
    service.create_queue(queue)
    2.times { |i| service.send_message(queue, { n: i }) }
    receipts = Array.new(2) do
      status, out = in_child do
        service.receive_messages(queue, max_messages: 1, visibility_timeout: 30).first[:receipt_handle]
      end
      assert status.success?, out
      out
    end
    scopes = receipts.map { |r| r.split(":")[2] }
    assert_equal 2, scopes.uniq.size, "forked workers share a receipt scope: #{receipts.inspect}"
  ensure
    service&.delete_queue(queue) if queue
  end

  def test_in_memory_service_made_before_fork_raises_used_after_fork
    service = TestSupport.connect(:in_memory)
    queue = TestSupport.unique_queue("fork_mem")
    service.create_queue(queue)
    status, out = in_child { service.send_message(queue, { a: 1 }) }
    assert status.success?
    assert_match(/\Araised TaskerCore::Services::UsedAfterFork: .*created in process #{Process.pid}/, out)
    assert_equal 0, service.queue_stats(queue)[:message_count], "the parent's queue is untouched"
  end

  # A child that closes a service it never used: closed in the child (no
  # reconnect), still open in the parent.
  def test_close_in_a_child_that_never_used_the_service
    service = TestSupport.connect(:pgmq)
    status, out = in_child do
      service.close
      before = service.closed?
      begin
        service.healthy?
        "#{before} no raise"
      rescue TaskerCore::Services::Closed
        "#{before} #{service.closed?} Closed"
      end
    end
    assert status.success?
    assert_equal "true true Closed", out
    refute service.closed?, "the parent's service is not closed"
    assert service.healthy?
  ensure
    service&.close
  end

  def test_a_child_can_make_its_own_service
    TestSupport.service(:in_memory).healthy? # the parent's runtime exists
    status, out = in_child do
      service = TestSupport.connect(:in_memory)
      queue = TestSupport.unique_queue("child_own")
      service.create_queue(queue)
      service.send_message(queue, { ok: true })
      service.receive_messages_wait(queue, wait: 2).first[:message][:ok]
    end
    assert status.success?
    assert_equal "true", out
  end
end
