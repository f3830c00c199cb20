"""Stop a registered server from its record alone: no backend class, no object of the process that started it.

A server can be listed by a process that never imported its backend (a backend registered only in
one kernel, a server started by another Jupyter server): the record's marker, pid and start stamp
are all that stopping needs.
"""

from __future__ import annotations

from . import registry
from .ports import port_is_free, wait_port_closed, wait_port_free
from .tree import StopReport, process_matches, stop_processes


def stop_record(record: registry.ServerRecord, grace: float = 15.0) -> StopReport:
    """Stop the server ``record`` describes, wait for its port, and forget the record; return what was done.

    Only processes carrying the record's marker are signalled: a pid that now belongs to another
    program is left alone and reported in ``StopReport.foreign``. An attached server (an external
    endpoint) is never stopped; its record is only forgotten.
    """
    if record.attached:
        registry.remove(record.name, expected=record)
        return StopReport()
    if record.cluster:
        report = stop_job(record, grace=grace)
        if not report.job_running:  # a job Ray did not end stays registered, for another stop
            registry.remove(record.name, expected=record)
        return report
    root = process_matches(record.pid, record.create_time) if record.pid else None
    report = stop_processes(root, record.marker, grace=grace)
    if record.port:
        # Wait only when we stopped something: a port someone else holds would never come free.
        report.port_free = (
            wait_port_free(record.host, record.port, timeout=10)
            if report.processes
            else port_is_free(record.host, record.port)
        )
    registry.remove(record.name, expected=record)
    return report


def stop_named(name: str, grace: float = 15.0) -> StopReport:
    """Stop the registered server called ``name`` (ServerNotFoundError when there is none)."""
    return stop_record(registry.get(name), grace=grace)


def stop_job(record: registry.ServerRecord, grace: float = 15.0) -> StopReport:
    """Stop a server's Ray job (Ray signals it on its node), then wait until its port no longer answers."""
    from .ray_jobs import RayJob

    job = RayJob.from_record(record.cluster)
    job.stop(timeout=grace + 15)  # Ray's own grace before it kills the job is longer than ours
    report = StopReport(job=job.job_id, job_state=job.status(fresh=True))
    if record.port and report.job_state != "UNKNOWN":
        report.port_free = wait_port_closed(record.host, record.port, timeout=10)
    return report
