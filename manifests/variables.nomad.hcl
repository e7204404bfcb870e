# Variables and locals: `caravan job run -var replicas=5 -var env=prod
# manifests/variables.nomad.hcl`, or NOMAD_VAR_env=prod in the environment.
variable "env" {
  type        = string
  description = "The environment this copy serves."
  default     = "staging"

  validation {
    condition     = contains(["staging", "prod"], var.env)
    error_message = "The env variable must be staging or prod."
  }
}

variable "replicas" {
  type    = number
  default = 2
}

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

locals {
  service_name = "api-${var.env}"
  check_every  = var.env == "prod" ? "5s" : "15s"
}

job "api" {
  datacenters = var.datacenters

  meta {
    env = var.env
  }

  group "api" {
    count = var.replicas

    network {
      port "http" {}
    }

    service {
      name = local.service_name
      port = "http"
      tags = ["urlprefix-/${var.env}/api strip=/${var.env}/api"]

      check {
        type     = "http"
        path     = "/health"
        interval = local.check_every
        timeout  = "2s"
      }
    }

    task "api" {
      driver = "raw_exec"

      config {
        command = "busybox"
        args    = ["httpd", "-f", "-p", "${NOMAD_PORT_http}"]
      }

      env {
        SERVICE = local.service_name
        ADDR    = "${NOMAD_ADDR_http}"
      }
    }
  }
}
