# frozen_string_literal: true

# TaskerCore's messaging API over the tasker-messaging Rust library.
#
# Every operation runs in the Rust extension (tasker_core/tasker_messaging_ruby.so,
# built by scripts/build-ruby-ext.sh) on one MessageBackend: the same providers,
# configuration, contract and tests as the Rust crate. This Ruby code only
# shapes arguments and results.
require "json"

require_relative "tasker_core/services/errors"
require_relative "tasker_core/tasker_messaging_ruby"
require_relative "tasker_core/types/simple_step_message"
require_relative "tasker_core/services/namespace_queue_router"
require_relative "tasker_core/services/message_service"
require_relative "tasker_core/services/message_service_factory"
