# A system job: one allocation on every eligible Linux node, including nodes
# that join later. It runs a tiny HTTP endpoint on a static port.
job "node-probe" {
  type = "system"

  constraint {
    attribute = "${attr.kernel.name}"
    value     = "linux"
  }

  update {
    max_parallel = 1
    stagger      = "10s"
  }

  group "probe" {
    count = 1

    network {
      port "http" {
        static = 9100
      }
    }

    task "probe" {
      driver = "raw_exec"

      config {
        command = "busybox"
        args    = ["httpd", "-f", "-p", "${NOMAD_PORT_http}", "-h", "${NOMAD_TASK_DIR}"]
      }

      template {
        data        = "node ${node.unique.name} in ${node.datacenter}\n"
        destination = "local/index.html"
      }

      kill_timeout = "5s"

      resources {
        cpu    = 50
        memory = 32
      }
    }
  }
}
