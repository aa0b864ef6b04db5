# frozen_string_literal: true

module TaskerCore
  module Services
    # The queue operations of one provider, chosen by configuration. Make one
    # with MessageServiceFactory.create; share it between threads (every call
    # releases the GVL while it waits). Each method is one call of the Rust
    # MessagingService: same contract (docs/CONTRACT.md), same errors (as the
    # classes in errors.rb).
    #
    # Messages are Hashes (or SimpleStepMessage, or anything with #to_h) sent
    # as JSON; received ones come back as Hashes with symbol keys:
    #   { receipt_handle:, message:,
    #     metadata: { message_id:, enqueued_at:, receive_count:, visibility_timeout_expires:,
    #                 headers: } }
    # where headers is a Hash of Strings (empty when the message was sent without).
    class MessageService
      # The NamespaceQueueRouter of [queues] pattern.
      attr_reader :router

      # Wraps a native backend; make one with MessageServiceFactory.create.
      def initialize(native)
        @native = native
        pattern, @namespaces, @default_visibility_timeout, @max_receive_count = native.queues_config
        @router = NamespaceQueueRouter.new(pattern)
      end

      # :pgmq, :rabbitmq or :in_memory.
      def provider
        @native.provider.to_sym
      end

      # [queues] namespaces, default_visibility_timeout_secs and max_receive_count.
      attr_reader :namespaces, :default_visibility_timeout, :max_receive_count

      # Creates the queue (and dead-letter queue) of every configured
      # namespace; idempotent. Returns the queue names.
      def initialize_service
        @namespaces.map { |namespace| @router.route_to_queue(namespace).tap { |q| create_queue(q) } }
      end

      # true when the server answers; false when it does not in time. Never hangs.
      def healthy?
        @native.health_check
      end

      # Creates the queue and its dead-letter queue; idempotent.
      def create_queue(queue_name)
        @native.create_queue(queue_name.to_s)
      end

      # Sends one message; returns its id once it is durable. delay: seconds
      # before it can be received (0 or nil: at once; above the provider's
      # maximum: InvalidArgument). headers: a Hash of String keys and values
      # every receive shows in metadata[:headers] (keys ASCII, at most 128
      # bytes, not starting with "x-" or "tasker"; they count toward the size
      # limit).
      def send_message(queue_name, message, delay: nil, headers: nil)
        @native.send_message(queue_name.to_s, encode(message), delay_seconds(delay), header_pairs(headers))
      end

      # Sends messages in order; returns their ids once all are durable.
      # delay: and headers: apply to every message, as in send_message.
      def send_batch(queue_name, messages, delay: nil, headers: nil)
        @native.send_batch(queue_name.to_s, messages.map { |m| encode(m) }, delay_seconds(delay),
                           header_pairs(headers))
      end

      # Up to max_messages messages ready now (returns at once), each leased
      # for visibility_timeout seconds (whole seconds, rounded up).
      def receive_messages(queue_name, max_messages: 10, visibility_timeout: @default_visibility_timeout)
        decode(@native.receive(queue_name.to_s, count(max_messages), Float(visibility_timeout), nil))
      end

      # Like receive_messages, but waits up to wait seconds for a first message.
      def receive_messages_wait(queue_name, max_messages: 10, visibility_timeout: @default_visibility_timeout,
                                wait: 5)
        decode(@native.receive(queue_name.to_s, count(max_messages), Float(visibility_timeout), Float(wait)))
      end

      # Removes a received message for good. LeaseExpired once its lease ended.
      def delete_message(queue_name, receipt_handle)
        @native.delete_message(queue_name.to_s, receipt_handle.to_s)
      end

      # Deletes many received messages at once (one statement on PGMQ, acks
      # back to back on RabbitMQ). Returns one outcome per receipt, in order:
      # true, or the MessagingError delete_message would have raised for it
      # (LeaseExpired, InvalidReceipt), returned rather than raised. Raises
      # only for the call as a whole (QueueNotFound, ConnectionError, ...).
      def delete_messages(queue_name, receipt_handles)
        @native.delete_messages(queue_name.to_s, Array(receipt_handles).map(&:to_s))
      end

      # Moves the lease's end to now + visibility_timeout; 0 releases it at once.
      def change_message_visibility(queue_name, receipt_handle, visibility_timeout)
        @native.change_message_visibility(queue_name.to_s, receipt_handle.to_s, Float(visibility_timeout))
      end

      # { queue_name:, message_count:, in_flight_count:, oldest_message_age_seconds:,
      #   dead_letter_count:, delayed_count: }; nil where the provider cannot know
      # (delayed_count: messages whose delay has not passed; nil on RabbitMQ).
      def queue_stats(queue_name)
        @native.queue_stats(queue_name.to_s)
      end

      # Removes every ready message (leased ones stay); returns how many.
      def purge_queue(queue_name)
        @native.purge_queue(queue_name.to_s)
      end

      # Deletes the queue and its dead-letter queue; idempotent.
      def delete_queue(queue_name)
        @native.delete_queue(queue_name.to_s)
      end

      # What this provider guarantees beyond the contract (Hash of booleans).
      def capabilities
        @native.capabilities
      end

      # Shuts the service down (contract rule C33): deletes and visibility
      # changes that returned are committed (PGMQ) or given a 250 ms grace to
      # be applied by the broker (RabbitMQ; a heuristic, a missed one comes
      # back as a duplicate), receives waiting in
      # other threads raise Closed, and every later call raises Closed
      # (never transient). Leases not settled come back: at once on
      # RabbitMQ, when they end on PGMQ. Idempotent; returns true.
      def close
        @native.close
      end

      # Whether #close was called.
      def closed?
        @native.closed?
      end

      # The extension object (for the benchmark's Rust baseline).
      attr_reader :native

      private

      def encode(message)
        body =
          case message
          when Hash then message
          when TaskerCore::Types::SimpleStepMessage then message.to_h
          else
            raise InvalidArgument, "a message must be a Hash or respond to #to_h" unless message.respond_to?(:to_h)

            message.to_h
          end
        JSON.generate(body)
      rescue JSON::GeneratorError, Encoding::UndefinedConversionError => e
        raise SerializationError, "message is not JSON-encodable: #{e.message}"
      end

      # A negative count is sent as 0, which the library refuses as
      # InvalidArgument like any other count below 1.
      def count(max_messages)
        [Integer(max_messages), 0].max
      end

      # A negative or non-finite delay is refused by the library
      # (InvalidArgument), as a visibility timeout is.
      def delay_seconds(delay)
        delay.nil? ? 0.0 : Float(delay)
      end

      # A Hash of headers as flat [key, value, ...] Strings.
      def header_pairs(headers)
        return [] if headers.nil?

        headers.to_h.flat_map { |key, value| [String(key), String(value)] }
      end

      def decode(rows)
        rows.map do |id, receipt, enqueued_at, receive_count, expires, body, headers|
          {
            receipt_handle: receipt,
            message: JSON.parse(body, symbolize_names: true),
            metadata: {
              message_id: id,
              enqueued_at: enqueued_at,
              receive_count: receive_count,
              visibility_timeout_expires: expires,
              headers: headers
            }
          }
        end
      end
    end
  end
end
