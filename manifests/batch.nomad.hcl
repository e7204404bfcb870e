# A batch job: each allocation runs to completion and is not restarted once
# it succeeds.
job "report" {
  type      = "batch"
  priority  = 40

  group "render" {
    count = 2

    restart {
      attempts = 1
      delay    = "5s"
      mode     = "fail"
    }

    reschedule {
      attempts  = 1
      interval  = "1h"
      delay     = "10s"
      unlimited = false
    }

    task "render" {
      driver = "exec"

      config {
        command = "/bin/sh"
        args    = ["-c", "echo rendering part ${NOMAD_ALLOC_INDEX} && sleep 2"]
      }

      logs {
        max_files     = 3
        max_file_size = 5
      }

      resources {
        cpu    = 200
        memory = 64
      }
    }
  }
}
