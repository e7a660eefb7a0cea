"""Monitoring, its own layer: who hears about each job run, on either host.

``runs`` is the record of one run (the run log's line, the status's and the metrics' source),
``pings`` the pure planner of Healthchecks-style pings and the webhook, ``prometheus`` the pure
renderer of the textfile-collector file, and ``job`` the one place that runs them around a job:
it sends through ``infra.http``, writes through ``infra.fsutil`` and logs through
``infra.journal``, and never lets a monitor fail or delay the job beyond its timeout.
"""
