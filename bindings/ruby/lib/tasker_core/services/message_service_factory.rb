# frozen_string_literal: true

module TaskerCore
  module Services
    # Builds a MessageService from the Rust configuration, layered exactly as
    # MessagingConfig::load does: config_file (else the file named by
    # TASKER_MESSAGING_CONFIG, else config/messaging.toml if present), then
    # TASKER_MESSAGING_* variables, then this call's arguments.
    module MessageServiceFactory
      module_function

      # provider: :pgmq, :rabbitmq or :in_memory (nil: as configured).
      # overrides: any configuration keys, nested as in the TOML file, e.g.
      #   create(provider: :pgmq, pgmq: { database_url: "postgres://..." },
      #          queues: { max_receive_count: 3 })
      # Unknown keys and bad values raise ConfigurationError naming the key.
      def create(provider: nil, config_file: nil, **overrides)
        overrides[:provider] = provider.to_s unless provider.nil?
        json = overrides.empty? ? nil : JSON.generate(overrides)
        MessageService.new(TaskerCore::Native::Backend.connect(json, config_file&.to_s))
      end

      # Like create, but with a block: yields the service, closes it when the
      # block ends (normally or by an exception) and returns the block's
      # value. Without a block, the same as create.
      #   MessageServiceFactory.open(provider: :pgmq) do |service|
      #     service.send_message("orders_queue", step)
      #   end
      def open(provider: nil, config_file: nil, **overrides)
        service = create(provider: provider, config_file: config_file, **overrides)
        return service unless block_given?

        begin
          yield service
        ensure
          service.close
        end
      end

      # The configuration from the file and the environment alone.
      def from_env
        create
      end
    end
  end
end
