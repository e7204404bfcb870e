# A periodic batch job: launched every fifteen minutes, never two at once.
job "cleanup" {
  type = "batch"

  periodic {
    cron             = "*/15 * * * *"
    prohibit_overlap = true
    time_zone        = "UTC"
  }

  group "cleanup" {
    count = 1

    task "sweep" {
      driver = "raw_exec"

      config {
        command = "/bin/sh"
        args    = ["-c", "find ${NOMAD_ALLOC_DIR} -name '*.tmp' -mmin +60 -print"]
      }

      kill_timeout = "10s"
    }
  }
}
