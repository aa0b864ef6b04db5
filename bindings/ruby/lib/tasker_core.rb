# frozen_string_literal: true

# TaskerCore's messaging API over the tasker-messaging Rust library.
#
# Every operation runs in the Rust extension (tasker_core/tasker_messaging_ruby.so,
# built when the gem is installed, or by scripts/build-ruby-ext.sh in a
# checkout) on one MessageBackend: the same providers,
# configuration, contract and tests as the Rust crate. This Ruby code only
# shapes arguments and results.
require "json"

# TaskerCore's messaging: start at Services::MessageServiceFactory.
module TaskerCore
  # The queue API: MessageServiceFactory makes a MessageService; errors are
  # MessagingError subclasses; NamespaceQueueRouter names queues.
  module Services; end

  # The messages Tasker sends: SimpleStepMessage.
  module Types; end
end

require_relative "tasker_core/services/errors"
# On the load path: the gem's extension directory, or lib/ in a checkout.
require "tasker_core/tasker_messaging_ruby"
require_relative "tasker_core/types/simple_step_message"
require_relative "tasker_core/services/namespace_queue_router"
require_relative "tasker_core/services/message_service"
require_relative "tasker_core/services/message_service_factory"
