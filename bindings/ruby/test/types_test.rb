# frozen_string_literal: true

require_relative "test_helper"

class TypesTest < Minitest::Test
  parallelize_me!
  Step = TaskerCore::Types::SimpleStepMessage
  Router = TaskerCore::Services::NamespaceQueueRouter

  def test_simple_step_message_round_trips_through_hashes
    deps = [SecureRandom.uuid, SecureRandom.uuid]
    step = Step.new(task_uuid: SecureRandom.uuid, step_uuid: SecureRandom.uuid, ready_dependency_step_uuids: deps)
    assert_equal step, Step.from_hash(step.to_h)
    assert_equal step, Step.from_hash(JSON.parse(JSON.generate(step.to_h))), "string keys"
    assert_equal deps, step.to_h[:ready_dependency_step_uuids]
    bare = Step.from_hash({ task_uuid: step.task_uuid, step_uuid: step.step_uuid })
    assert_equal [], bare.ready_dependency_step_uuids
    assert_raises(ArgumentError) { Step.new(task_uuid: "nope", step_uuid: SecureRandom.uuid) }
    assert_raises(KeyError) { Step.from_hash({ task_uuid: SecureRandom.uuid }) }
  end

  def test_router_routes_and_reads_back
    router = Router.new
    assert_equal "fulfillment_queue", router.route_to_queue("fulfillment")
    assert_equal "fulfillment", router.extract_namespace("fulfillment_queue")
    assert_nil router.extract_namespace("fulfillment")
    custom = Router.new("tasker_{namespace}_steps")
    assert_equal "tasker_billing_steps", custom.route_to_queue("billing", "SimpleStepMessage")
  end

  def test_initialize_service_creates_the_namespace_queues
    namespace = "#{TestSupport::RUN}_ns"
    service = TaskerCore::Services::MessageServiceFactory.create(
      provider: :in_memory, config_file: File.join(TestSupport::CONFIG_DIR, "messaging.toml"),
      queues: { namespaces: [namespace] }
    )
    assert_equal ["#{namespace}_queue"], service.initialize_service
    assert_equal 0, service.queue_stats("#{namespace}_queue")[:message_count]
    assert_equal "#{namespace}_queue", service.router.route_to_queue(namespace)
  end
end
