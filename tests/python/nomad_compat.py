"""python-nomad 2.1 against a Caravan server, unchanged: the calls a Nomad user's scripts make.

Usage: python3 nomad_compat.py HOST PORT
Exits non-zero (with the failing step) when any call fails or returns the wrong shape.
"""
import sys
import time

import nomad

host, port = sys.argv[1], int(sys.argv[2])
n = nomad.Nomad(host=host, port=port, timeout=10)

job = {
    "Job": {
        "ID": "pycompat",
        "Name": "pycompat",
        "Type": "service",
        "Datacenters": ["dc1"],
        "TaskGroups": [
            {
                "Name": "web",
                "Count": 2,
                "Tasks": [
                    {
                        "Name": "server",
                        "Driver": "raw_exec",
                        "Config": {"command": "/bin/sleep", "args": ["600"]},
                        "Resources": {"CPU": 100, "MemoryMB": 64},
                    }
                ],
            }
        ],
    }
}


def step(name, ok):
    if not ok:
        print(f"FAILED: {name}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {name}")


leader = n.status.leader.get_leader()
step("status.leader is ip:port", isinstance(leader, str) and ":" in leader)
members = n.agent.get_members()
step("agent.members lists one alive server", len(members["Members"]) == 1 and members["Members"][0]["Status"] == "alive")
step("regions", n.regions.get_regions() == ["global"])

validation = n.validate.validate_job(job).json()  # python-nomad returns the raw response here
step("validate.validate_job has no errors", not validation["ValidationErrors"])

registered = n.jobs.register_job(job)
step("jobs.register_job returns an EvalID", bool(registered["EvalID"]))
modify_index = registered["JobModifyIndex"]

step("jobs.get_jobs lists it", any(j["ID"] == "pycompat" for j in n.jobs.get_jobs()))
step("'pycompat' in n.jobs", "pycompat" in n.jobs)
got = n.job.get_job("pycompat")
step("job.get_job round-trips", got["ID"] == "pycompat" and got["TaskGroups"][0]["Count"] == 2)

def wait_allocations(count):
    deadline = time.time() + 10
    allocs = []
    while time.time() < deadline:
        allocs = n.job.get_allocations("pycompat")
        if len([a for a in allocs if a["DesiredStatus"] == "run"]) == count:
            break
        time.sleep(0.1)
    return allocs


step("the job's two allocations are placed", len(wait_allocations(2)) == 2)

job["Job"]["TaskGroups"][0]["Count"] = 3
plan = n.job.plan_job("pycompat", job, diff=True)
step("job.plan_job annotates the count change", plan["Annotations"]["DesiredTGUpdates"]["web"]["Place"] == 1)
step("job.plan_job has a diff", plan["Diff"]["Type"] == "Edited")

try:
    n.job.register_job("pycompat", dict(job, EnforceIndex=True, JobModifyIndex=modify_index - 1))
    step("a stale EnforceIndex is refused", False)
except nomad.api.exceptions.BaseNomadException:
    step("a stale EnforceIndex is refused", True)

n.job.register_job("pycompat", dict(job, EnforceIndex=True, JobModifyIndex=modify_index))
versions = n.job.get_versions("pycompat")
step("job.get_versions has two versions", len(versions["Versions"]) == 2)

allocs = wait_allocations(3)
step("job.get_allocations shows the placements", len(allocs) == 3)
alloc = n.allocation.get_allocation(allocs[0]["ID"])
step("allocation.get_allocation", alloc["JobID"] == "pycompat")
step("allocations.get_allocations", len(n.allocations.get_allocations()) >= 3)
evals = n.job.get_evaluations("pycompat")
step("job.get_evaluations", len(evals) >= 2)
step("evaluation.get_evaluation", n.evaluation.get_evaluation(evals[0]["ID"])["JobID"] == "pycompat")
web = n.job.get_summary("pycompat")["Summary"]["web"]
step("job.get_summary", web["Starting"] + web["Running"] == 3)
nodes = n.nodes.get_nodes()
step("nodes.get_nodes", len(nodes) >= 1 and all(x["Status"] == "ready" for x in nodes))
step("node.get_node", n.node.get_node(nodes[0]["ID"])["ID"] == nodes[0]["ID"])
step("metrics", "Counters" in n.metrics.get_metrics())

n.job.deregister_job("pycompat")
step("job.deregister_job stops it", n.job.get_job("pycompat")["Stop"] is True)
n.job.deregister_job("pycompat", purge=True)
try:
    n.job.get_job("pycompat")
    step("a purged job is gone", False)
except nomad.api.exceptions.URLNotFoundNomadException:
    step("a purged job is gone", True)
print("python-nomad compatibility: all steps passed")
