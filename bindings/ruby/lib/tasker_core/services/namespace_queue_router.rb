# frozen_string_literal: true

module TaskerCore
  module Services
    # Maps a namespace to its queue by a pattern ("{namespace}_queue" by
    # default): the Rust NamespaceQueueRouter, called through the extension.
    class NamespaceQueueRouter
      # The pattern when none is configured.
      DEFAULT_PATTERN = "{namespace}_queue"

      # The pattern, with "{namespace}" where the namespace goes.
      attr_reader :pattern

      # A router for +pattern+ (it must contain "{namespace}").
      def initialize(pattern = DEFAULT_PATTERN)
        @pattern = pattern.to_s
        @native = TaskerCore::Native::Router.new(@pattern)
      end

      # The queue for a message of message_type in namespace (the type does
      # not change the route).
      def route_to_queue(namespace, message_type = "SimpleStepMessage")
        @native.route_to_queue(namespace.to_s, message_type.to_s)
      end

      # The namespace of a queue name that follows the pattern, else nil.
      def extract_namespace(queue_name)
        @native.extract_namespace(queue_name.to_s)
      end
    end
  end
end
