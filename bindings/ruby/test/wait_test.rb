# frozen_string_literal: true

# Waits of any length: the binding follows the Rust deadline rule
# (tasker_messaging::wait_deadline), so a wait too long to have an end is
# one with none, never an overflow.
require_relative "test_helper"

class WaitTest < Minitest::Test
  parallelize_me!
  Services = TaskerCore::Services

  def service
    TestSupport.service(:in_memory)
  end

  def with_queue
    queue = TestSupport.unique_queue("wait")
    service.create_queue(queue)
    yield queue
  ensure
    service.delete_queue(queue)
  end

  # 1e19 s is beyond any Instant; 1e30 s beyond any Duration. Both are waits
  # without an end: they return the message sent meanwhile.
  def test_huge_waits_have_no_end_and_return_a_message
    [1e19, 1e30, Float::INFINITY].each do |wait|
      with_queue do |queue|
        waiter = Thread.new { service.receive_messages_wait(queue, wait: wait) }
        waiter.report_on_exception = false
        sleep 0.2
        service.send_message(queue, { wait: wait.to_s })
        got = Timeout.timeout(5) { waiter.value }
        assert_equal 1, got.size, "wait: #{wait}"
        assert_equal({ "wait" => wait.to_s }, got[0][:message].transform_keys(&:to_s))
      end
    end
  end

  def test_negative_and_nan_waits_are_invalid
    with_queue do |queue|
      [-1, Float::NAN, -Float::INFINITY].each do |wait|
        assert_raises(Services::InvalidArgument, "wait: #{wait}") do
          service.receive_messages_wait(queue, wait: wait)
        end
      end
    end
  end
end
