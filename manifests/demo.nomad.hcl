# The "demo" web service from Nomad's canary walkthrough: three instances
# behind the load balancer (the `urlprefix-/` tag is Fabio's routing syntax,
# which Caravan's built-in load balancer understands), an HTTP health check,
# and one canary per update, promoted by hand.
job "demo" {
  datacenters = ["dc1"]
  type        = "service"

  update {
    max_parallel     = 1
    canary           = 1
    min_healthy_time = "10s"
    healthy_deadline = "2m"
    auto_revert      = false
    auto_promote     = false
  }

  group "demo" {
    count = 3

    network {
      port "http" {
        to = 8080
      }
    }

    service {
      name        = "demo-webapp"
      port        = "http"
      tags        = ["urlprefix-/"]
      canary_tags = ["urlprefix-/", "canary"]

      check {
        type     = "http"
        path     = "/"
        interval = "2s"
        timeout  = "2s"
      }
    }

    task "server" {
      driver = "docker"

      env {
        VERSION = "v1"
        PORT    = "8080"
      }

      config {
        image = "caravan/demo-web:v1"
        ports = ["http"]
      }

      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
