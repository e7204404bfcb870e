# There can only be a single job definition per file. This job is named
# "example" so it will create a job with the ID and Name "example".

# The "job" block is the top-most configuration option in the job
# specification. A job is a declarative specification of tasks that Caravan
# (like Nomad) should run. Jobs have a globally unique name, one or many task
# groups, which are themselves collections of one or many tasks.
job "example" {
  # The "datacenters" parameter specifies the list of datacenters which should
  # be considered when placing this task. Globs are allowed; "*" (the default)
  # means every datacenter.
  datacenters = ["*"]

  # The "type" parameter controls the type of job, which impacts the scheduler's
  # decision on placement: "service", "batch", "system" or "sysbatch".
  type = "service"

  # The "update" block specifies the update strategy of task groups. It
  # controls rolling upgrades and canary deployments.
  update {
    # How many allocations within a task group can be updated at the same time.
    max_parallel = 1

    # How long an allocation must be healthy before it counts towards the
    # deployment's progress.
    min_healthy_time = "10s"

    # The deadline by which an allocation must become healthy, or it is marked
    # unhealthy.
    healthy_deadline = "3m"

    # The deadline by which an allocation must become healthy after the last
    # healthy one, or the deployment fails.
    progress_deadline = "10m"

    # Whether a failed deployment rolls the job back to its last stable version.
    auto_revert = false

    # How many canaries to start before the rest of the update. 0 disables
    # canaries.
    canary = 0
  }

  # The "migrate" block controls how allocations move off a draining node.
  migrate {
    max_parallel     = 1
    health_check     = "checks"
    min_healthy_time = "10s"
    healthy_deadline = "5m"
  }

  # The "group" block defines a series of tasks that should be co-located on
  # the same client (host). All tasks within a group are placed on the same
  # host.
  group "cache" {
    # How many instances of this group should run.
    count = 1

    # The "network" block declares the ports the group needs. "db" gets a
    # dynamic host port, mapped to 6379 inside the container.
    network {
      port "db" {
        to = 6379
      }
    }

    # The "service" block registers this group in Caravan's built-in service
    # discovery, with a health check.
    service {
      name     = "redis-cache"
      tags     = ["global", "cache"]
      port     = "db"
      provider = "nomad"

      check {
        name     = "alive"
        type     = "tcp"
        interval = "10s"
        timeout  = "2s"
      }
    }

    # The "restart" block configures a group's behaviour on task failure,
    # before the allocation is rescheduled elsewhere.
    restart {
      attempts = 2
      interval = "30m"
      delay    = "15s"
      mode     = "fail"
    }

    # The "ephemeral_disk" block describes the scratch disk the group needs,
    # in MB.
    ephemeral_disk {
      size = 300
    }

    # The "task" block creates an individual unit of work, such as a Docker
    # container, web application, or batch processing.
    task "redis" {
      # The driver runs the task: "docker", "exec", "raw_exec" or "java".
      driver = "docker"

      # The "config" block is specific to each driver.
      config {
        image          = "redis:7"
        ports          = ["db"]
        auth_soft_fail = true
      }

      # The "resources" block describes what the task needs: cpu in MHz and
      # memory in MB. The scheduler places the task on a node with room.
      resources {
        cpu    = 500
        memory = 256
      }
    }
  }
}
