# The older syntax many existing job files use: the network inside the task's
# resources (with mbits), and the docker driver's port_map.
job "legacy" {
  datacenters = ["dc1"]

  group "cache" {
    count = 1

    task "redis" {
      driver = "docker"

      config {
        image = "redis:7"

        port_map {
          db = 6379
        }
      }

      resources {
        cpu    = 500
        memory = 256

        network {
          mbits = 10
          port "db" {}
        }
      }

      service {
        name = "legacy-redis"
        port = "db"

        check {
          name     = "alive"
          type     = "tcp"
          interval = "10s"
          timeout  = "2s"
        }
      }
    }
  }
}
