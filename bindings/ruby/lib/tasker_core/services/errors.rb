# frozen_string_literal: true

module TaskerCore
  module Services
    # Base of every error a MessageService raises; mirrors the Rust
    # MessagingError. #transient? says whether retrying the same call can help
    # (a lost connection, an open circuit breaker); the library has already
    # retried transient failures per [retry_policy] before raising.
    class MessagingError < StandardError
      # +message+: what went wrong; +transient+: whether a retry can help.
      def initialize(message = nil, transient = false)
        super(message)
        @transient = transient ? true : false
      end

      # Whether retrying the same call can succeed.
      def transient?
        @transient
      end
    end

    # One class per MessagingError variant (the extension picks the class).

    # The server cannot be reached (Rust +Connection+; transient).
    class ConnectionError < MessagingError; end
    # The queue does not exist.
    class QueueNotFound < MessagingError; end
    # The queue name breaks the naming rules; no I/O was done.
    class InvalidQueueName < MessagingError; end
    # An argument is out of range.
    class InvalidArgument < MessagingError; end
    # A message cannot be encoded, or a body decoded (Rust +Serialization+).
    class SerializationError < MessagingError; end
    # The receipt is malformed, or belongs to another provider or queue.
    class InvalidReceipt < MessagingError; end
    # The receipt's lease has ended: the message may already be back.
    class LeaseExpired < MessagingError; end
    # Over queues.max_message_bytes; nothing was sent.
    class MessageTooLarge < MessagingError; end
    # The circuit breaker is open (transient).
    class CircuitOpen < MessagingError; end
    # The configuration is invalid (Rust +Config+); the message names the key.
    class ConfigurationError < MessagingError; end
    # The TLS handshake failed: a certificate problem (Rust +Tls+).
    class TlsError < MessagingError; end
    # Any other provider failure (Rust +Provider+).
    class ProviderError < MessagingError; end
    # The service was closed (#close); never transient.
    class Closed < MessagingError; end

    # Not MessagingError variants: failures of the Ruby binding itself.
    # A Rust panic caught at the boundary (a bug); the call's effect is unknown.
    class InternalError < MessagingError; end
    # An in_memory service used in a process forked after it was created: its
    # queues live in the parent. (PGMQ and RabbitMQ services reconnect instead.)
    class UsedAfterFork < MessagingError; end
  end
end
