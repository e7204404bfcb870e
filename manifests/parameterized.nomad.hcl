# A parameterized job: nothing runs until it is dispatched with a payload
# and metadata (`caravan job dispatch -meta customer=acme transcode input.txt`).
job "transcode" {
  type = "batch"

  parameterized {
    payload       = "required"
    meta_required = ["customer"]
    meta_optional = ["quality"]
  }

  group "work" {
    count = 1

    task "transcode" {
      driver = "raw_exec"

      dispatch_payload {
        file = "input.txt"
      }

      config {
        command = "/bin/sh"
        args    = ["-c", "wc -c ${NOMAD_TASK_DIR}/input.txt; echo customer=${NOMAD_META_customer}"]
      }

      kill_timeout = "30s"
    }
  }
}
