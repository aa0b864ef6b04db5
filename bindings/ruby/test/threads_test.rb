# frozen_string_literal: true

# 8 Ruby threads x 500 messages on one service: each message handled exactly
# once, and, on the server providers, in clearly less wall time than one
# thread doing the same work (calls release the GVL while they wait on I/O).
# The one-thread time is measured on a quarter of the messages (same work per
# message) and scaled by 4, to keep the suite quick.
# Timing-sensitive, so scripts/test.sh runs it in its own process, alone.
require_relative "test_helper"

class ThreadsTest < Minitest::Test
  THREADS = 8
  PER_THREAD = 500
  TOTAL = THREADS * PER_THREAD
  SAMPLE = TOTAL / 4

  # `threads` workers share `total` messages: each sends its share one by
  # one, then receives (batches of 10) and deletes until all are handled.
  # Returns [seconds, ids handled in order of handling].
  def workload(service, queue, threads, total)
    handled = Queue.new
    count = 0
    lock = Mutex.new
    per = total / threads
    seconds = TestSupport.elapsed do
      threads.times.map do |t|
        Thread.new do
          per.times { |i| service.send_message(queue, { id: (t * per) + i }) }
          until lock.synchronize { count >= total }
            service.receive_messages_wait(queue, max_messages: 10, visibility_timeout: 120, wait: 0.2).each do |msg|
              service.delete_message(queue, msg[:receipt_handle])
              handled << msg[:message][:id]
              lock.synchronize { count += 1 }
            end
          end
        end
      end.each(&:join)
    end
    [seconds, Array.new(handled.size) { handled.pop }]
  end

  def check(provider, timed:)
    service = TestSupport.connect(provider)
    queue = TestSupport.unique_queue("threads")
    service.create_queue(queue)
    threaded, ids = workload(service, queue, THREADS, TOTAL)
    assert_equal (0...TOTAL).to_a, ids.sort, "#{THREADS} threads: each message handled exactly once"
    line = format("%d messages: %d threads %.2f s", TOTAL, THREADS, threaded)
    if timed
      sample, ids = workload(service, queue, 1, SAMPLE)
      assert_equal (0...SAMPLE).to_a, ids.sort, "one thread: each message handled exactly once"
      sequential = sample * TOTAL / SAMPLE
      line += format(", one thread %.2f s (%d messages in %.2f s, x%d)", sequential, SAMPLE, sample, TOTAL / SAMPLE)
    end
    assert_equal 0, service.queue_stats(queue)[:message_count]
    puts "\n#{provider}: #{line}"
    return unless timed

    assert_operator threaded, :<, 0.75 * sequential,
                    "#{THREADS} threads must take clearly less than one thread (#{line})"
  ensure
    service&.delete_queue(queue) if queue
  end

  def test_pgmq
    check(:pgmq, timed: true)
  end

  def test_rabbitmq
    check(:rabbitmq, timed: true)
  end

  # No I/O to overlap in-process: only exactly-once is checked.
  def test_in_memory
    check(:in_memory, timed: false)
  end
end
