# frozen_string_literal: true

# The factory layers configuration exactly as the Rust MessagingConfig::load:
# file, then TASKER_MESSAGING_* variables, then the call's arguments. It
# changes the process environment, so scripts/test.sh runs it in its own process.
require_relative "test_helper"

class ConfigTest < Minitest::Test
  Services = TaskerCore::Services
  Factory = Services::MessageServiceFactory

  def file(name)
    File.join(TestSupport::CONFIG_DIR, name)
  end

  def with_env(vars)
    saved = vars.keys.to_h { |k| [k, ENV.fetch(k, nil)] }
    vars.each { |k, v| ENV[k] = v }
    yield
  ensure
    saved.each { |k, v| ENV[k] = v }
  end

  def test_file_then_environment_then_arguments
    assert_equal 5, Factory.create(config_file: file("in_memory.toml")).max_receive_count
    with_env("TASKER_MESSAGING_QUEUES__MAX_RECEIVE_COUNT" => "7", "TASKER_MESSAGING_PROVIDER" => "rabbitmq") do
      service = Factory.create(provider: :in_memory, config_file: file("in_memory.toml"))
      assert_equal 7, service.max_receive_count, "the environment overrides the file"
      assert_equal :in_memory, service.provider, "an argument overrides the environment"
      service = Factory.create(provider: :in_memory, config_file: file("in_memory.toml"),
                               queues: { max_receive_count: 2 })
      assert_equal 2, service.max_receive_count
    end
  end

  def test_tasker_messaging_config_names_the_file
    with_env("TASKER_MESSAGING_CONFIG" => file("pgmq.toml"),
             "TASKER_MESSAGING_PGMQ__DATABASE_URL" => TestSupport::DATABASE_URL) do
      service = Factory.from_env
      assert_equal :pgmq, service.provider
      assert service.healthy?
    end
    with_env("TASKER_MESSAGING_CONFIG" => file("in_memory.toml"), "TASKER_MESSAGING_PROVIDER" => "in_memory") do
      assert_equal %w[fulfillment inventory notifications], Factory.from_env.namespaces
    end
  end

  def test_without_a_file_config_messaging_toml_is_read_from_the_working_directory
    Dir.chdir(TestSupport::REPO) do
      service = Factory.from_env
      assert_equal :in_memory, service.provider
      assert_equal 30, service.default_visibility_timeout
    end
    Dir.chdir(File.join(TestSupport::REPO, "bindings")) do
      assert_equal [], Factory.from_env.namespaces, "no file there: the defaults"
    end
  end

  def test_bad_configuration_names_the_key
    error = assert_raises(Services::ConfigurationError) do
      Factory.create(provider: :in_memory, config_file: file("in_memory.toml"), queues: { max_receive_count: 0 })
    end
    assert_includes error.message, "queues.max_receive_count"
    refute error.transient?
    error = assert_raises(Services::ConfigurationError) do
      Factory.create(provider: :in_memory, config_file: file("in_memory.toml"), queues: { no_such_key: 1 })
    end
    assert_includes error.message, "no_such_key"
    error = assert_raises(Services::ConfigurationError) { Factory.create(config_file: file("missing.toml")) }
    assert_includes error.message, "missing.toml"
    with_env("TASKER_MESSAGING_CONFIG" => file("missing.toml")) do
      assert_raises(Services::ConfigurationError) { Factory.from_env }
    end
  end
end
