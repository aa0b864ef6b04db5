# frozen_string_literal: true

module TaskerCore
  module Services
    # Base of every error a MessageService raises; mirrors the Rust
    # MessagingError. #transient? says whether retrying the same call can help
    # (a lost connection, an open circuit breaker); the library has already
    # retried transient failures per [retry_policy] before raising.
    class MessagingError < StandardError
      def initialize(message = nil, transient = false)
        super(message)
        @transient = transient ? true : false
      end

      def transient?
        @transient
      end
    end

    # One class per MessagingError variant (the extension picks the class).
    class ConnectionError < MessagingError; end     # Connection: server unreachable (transient)
    class QueueNotFound < MessagingError; end       # the queue does not exist
    class InvalidQueueName < MessagingError; end    # the name breaks the rules; no I/O was done
    class InvalidArgument < MessagingError; end     # an argument is out of range
    class SerializationError < MessagingError; end  # Serialization: not encodable or decodable
    class InvalidReceipt < MessagingError; end      # malformed, or another provider's or queue's
    class LeaseExpired < MessagingError; end        # the receipt's lease has ended
    class MessageTooLarge < MessagingError; end     # over queues.max_message_bytes; nothing sent
    class CircuitOpen < MessagingError; end         # the breaker is open (transient)
    class ConfigurationError < MessagingError; end  # Config: invalid configuration
    class TlsError < MessagingError; end            # Tls: TLS handshake failed (certificate)
    class ProviderError < MessagingError; end       # Provider: any other provider failure
    class Closed < MessagingError; end              # the service was closed (#close); never transient

    # Not MessagingError variants: failures of the Ruby binding itself.
    # A Rust panic caught at the boundary (a bug); the call's effect is unknown.
    class InternalError < MessagingError; end
    # An in_memory service used in a process forked after it was created: its
    # queues live in the parent. (PGMQ and RabbitMQ services reconnect instead.)
    class UsedAfterFork < MessagingError; end
  end
end
