"""Fleet drift wired into the hub: ingest, store, scheduler jobs and the read side.

- :mod:`hub.monitor.ingest`: each data window merged into its device bucket, in the
  ingest batch's transaction;
- :mod:`hub.monitor.jobs`: the scheduler's jobs (score closed buckets, plan and apply
  alerts; roll up and expire buckets);
- :mod:`hub.monitor.views`: what REST, the CLI and ``/metrics`` read;
- :mod:`hub.monitor.references`, :mod:`hub.monitor.codec`: a scope's reference and
  policy from the registry and the store, and the core's values as stored JSON.

See docs/drift.md, "Integration plan".
"""
