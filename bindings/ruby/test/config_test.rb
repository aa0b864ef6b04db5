# frozen_string_literal: true

# The factory layers configuration exactly as the Rust MessagingConfig::load:
# file, then TASKER_MESSAGING_* variables, then the call's arguments. It
# changes the process environment, so scripts/test.sh runs it in its own process.
require "English"
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

  # [rabbitmq.tls] reaches the Rust loader from arguments and the environment
  # alike; the amqps listener is the private cluster's node 1 (port 5691),
  # the one tests/tls.rs uses.
  TLS_SECRET = "hunter2-ruby-tls"
  CLUSTER = File.join(TestSupport::REPO, "scripts/rabbitmq-cluster.sh")

  # Starts the cluster if needed; returns the certificates' directory.
  def tls_node
    out = IO.popen(["bash", CLUSTER, "start"], err: %i[child out], &:read)
    assert $CHILD_STATUS.success?, "scripts/rabbitmq-cluster.sh start failed:\n#{out}"
    certs = IO.popen(["bash", CLUSTER, "certs"], &:read).strip
    assert $CHILD_STATUS.success? && !certs.empty?, "scripts/rabbitmq-cluster.sh certs failed"
    certs
  end

  def amqps(ca_file)
    { provider: :rabbitmq, config_file: file("messaging.toml"),
      rabbitmq: { url: "amqps://guest:#{TLS_SECRET}@localhost:5691/%2f", connection_timeout_ms: 3000,
                  tls: { ca_file: ca_file } } }
  end

  def test_rabbitmq_tls_keys
    certs = tls_node
    error = assert_raises(Services::TlsError) { Factory.create(**amqps(File.join(certs, "wrong-ca.pem"))) }
    assert_includes error.message, "UnknownIssuer"
    refute_includes error.message, TLS_SECRET
    refute error.transient?
    with_env("TASKER_MESSAGING_RABBITMQ__TLS__CA_FILE" => File.join(certs, "ca.pem"),
             "TASKER_MESSAGING_RABBITMQ__URL" => "amqps://guest:guest@localhost:5691/%2f") do
      service = Factory.create(provider: :rabbitmq, config_file: file("messaging.toml"))
      assert service.healthy?, "amqps with the CA from the environment"
    end
    error = assert_raises(Services::ConfigurationError) { Factory.create(**amqps("/nonexistent/ca.pem")) }
    assert_includes error.message, "rabbitmq.tls.ca_file"
    refute_includes error.message, TLS_SECRET
  end

  # rabbitmq.urls (a cluster's nodes) as an override: the backend connects
  # to a node that answers (here the machine's own; the other port refuses),
  # and url with urls is a ConfigurationError naming both keys, with no
  # password in it.
  def test_rabbitmq_url_list
    dead = "amqp://guest:#{TLS_SECRET}@127.0.0.1:1/%2f"
    # A file without rabbitmq.url: an override cannot remove a key.
    nodes = { provider: :rabbitmq, config_file: file("in_memory.toml") }
    3.times do # the order is shuffled: the dead node comes first in some
      service = Factory.create(**nodes, rabbitmq: { urls: [dead, TestSupport::AMQP_URL], connection_timeout_ms: 2000 })
      assert service.healthy?
      service.close
    end
    error = assert_raises(Services::ConfigurationError) do
      Factory.create(**nodes, rabbitmq: { url: TestSupport::AMQP_URL, urls: [dead] })
    end
    assert_includes error.message, "rabbitmq.url"
    assert_includes error.message, "rabbitmq.urls"
    refute_includes error.message, TLS_SECRET
  end
end
