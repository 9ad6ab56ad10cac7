"""Acceptance 6: twenty jobs at once, two running at a time: all complete, none lost, memory
bounded."""
from __future__ import annotations

import threading

from orchestrator.jobs.client import JobClient, jobs_pb2, state_name

from .conftest import make_tape, wait_for

JOBS = 20
PEAK_RSS_LIMIT_MIB = 1024


def tiny_options():
    options = jobs_pb2.JobOptions(codec="ffv1", native="full")
    options.stages.add(task="denoise", model="classical")
    return options


def test_twenty_jobs_two_at_a_time(tmp_path, orchestrator):
    server = orchestrator("--max-running", "2")
    tapes = [make_tape(tmp_path / f"tape{i:02d}.mp4", scenes=1, frames=4, size=(32, 24))
             for i in range(JOBS)]
    ids: list[str] = []
    lock = threading.Lock()

    def submit(tape):
        with JobClient(server.address) as client:
            job = client.submit(tape, tiny_options())
        with lock:
            ids.append(job.job_id)

    threads = [threading.Thread(target=submit, args=(tape,)) for tape in tapes]
    for thread in threads:
        thread.start()
    most_running = 0
    with JobClient(server.address) as client:
        def all_ended():
            nonlocal most_running
            states = [state_name(j) for j in client.list()]
            most_running = max(most_running, states.count("RUNNING"))
            return len(states) == JOBS and all(s in ("SUCCEEDED", "FAILED") for s in states)

        for thread in threads:
            thread.join()
        wait_for(all_ended, timeout=240, interval=0.1)
        jobs = {j.job_id: j for j in client.list()}
    assert sorted(jobs) == sorted(ids)
    assert all(state_name(j) == "SUCCEEDED" for j in jobs.values()), [j.error for j in jobs.values()]
    assert most_running <= 2
    peak = server.peak_rss_mib()
    print(f"\npeak RSS of the orchestrator service over {JOBS} jobs: {peak:.0f} MiB")
    assert peak < PEAK_RSS_LIMIT_MIB
