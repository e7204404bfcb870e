# The built-in load balancer on every Linux node, as the seed runs Fabio: `caravan lb` proxies
# :9999 to the healthy instances of services tagged `urlprefix-…` (the route table the servers
# build) and serves its status page, /routes, /health and /metrics on :9998.
#
# raw_exec runs the binary as it is on the node, so `command` is an absolute path: install
# caravan there first on every node, e.g. from a checkout
#     cargo install --path . --root /usr/local        (puts it in /usr/local/bin/caravan)
# or copy a build:  sudo install -m 755 target/release/caravan /usr/local/bin/caravan
#
# -servers points at the node's own address on the API port; the agent must listen there
# (`-bind 0.0.0.0` or the node's address). Several servers can be listed, comma-separated.
job "caravan-lb" {
  type = "system"

  constraint {
    attribute = "${attr.kernel.name}"
    value     = "linux"
  }

  update {
    max_parallel = 1
    stagger      = "10s"
  }

  group "lb" {
    # One per node (a system job places the group on every eligible node).
    count = 1

    network {
      port "lb" {
        static = 9999
      }
      port "ui" {
        static = 9998
      }
    }

    service {
      name     = "caravan-lb"
      port     = "ui"
      provider = "nomad"

      check {
        type     = "http"
        path     = "/health"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "lb" {
      driver = "raw_exec"

      config {
        command = "/usr/local/bin/caravan"
        args = [
          "lb",
          "-addr", "0.0.0.0:${NOMAD_PORT_lb}",
          "-ui-addr", "0.0.0.0:${NOMAD_PORT_ui}",
          "-servers", "http://${attr.unique.network.ip-address}:4646",
        ]
      }

      # In-flight requests get up to 10 s to finish after SIGTERM.
      kill_timeout = "15s"

      resources {
        cpu    = 200
        memory = 64
      }
    }
  }
}
