# frozen_string_literal: true

module TaskerCore
  module Types
    # "Step X of task Y is ready", with the steps it waited on: the Rust
    # SimpleStepMessage, field for field (the JSON is the same on both sides).
    class SimpleStepMessage
      # A UUID in its canonical text form (lower case after #uuid!).
      UUID = /\A\h{8}-\h{4}-\h{4}-\h{4}-\h{12}\z/

      # The task's UUID.
      attr_reader :task_uuid
      # The ready step's UUID.
      attr_reader :step_uuid
      # The UUIDs of the steps this one waited on (frozen).
      attr_reader :ready_dependency_step_uuids

      # Raises ArgumentError unless every id is a UUID; the message is frozen.
      def initialize(task_uuid:, step_uuid:, ready_dependency_step_uuids: [])
        @task_uuid = self.class.uuid!(task_uuid, :task_uuid)
        @step_uuid = self.class.uuid!(step_uuid, :step_uuid)
        @ready_dependency_step_uuids = Array(ready_dependency_step_uuids)
          .map { |id| self.class.uuid!(id, :ready_dependency_step_uuids) }.freeze
        freeze
      end

      # From a Hash with symbol or string keys (a received message's :message).
      def self.from_hash(hash)
        get = ->(key) { hash.fetch(key) { hash.fetch(key.to_s) } }
        new(
          task_uuid: get.(:task_uuid),
          step_uuid: get.(:step_uuid),
          ready_dependency_step_uuids: hash[:ready_dependency_step_uuids] ||
            hash["ready_dependency_step_uuids"] || []
        )
      end

      # The message as a Hash, the shape it is sent in as JSON.
      def to_h
        {
          task_uuid: task_uuid,
          step_uuid: step_uuid,
          ready_dependency_step_uuids: ready_dependency_step_uuids.dup
        }
      end

      # Equal when every field is.
      def ==(other)
        other.is_a?(SimpleStepMessage) && other.to_h == to_h
      end
      alias eql? ==

      # Consistent with #== (usable as a Hash key).
      def hash
        to_h.hash
      end

      # +value+ as a lower-case UUID string; ArgumentError naming +field+ otherwise.
      def self.uuid!(value, field)
        text = value.to_s.downcase
        return text if UUID.match?(text)

        raise ArgumentError, "#{field} must be a UUID (got #{value.inspect})"
      end
    end
  end
end
