"""Federated rounds, the shell: the store, ingest, the scheduler and REST around
:mod:`hub.rounds` (the pure core).

- :mod:`~hub.federated.models`: a model's policy, its base versions as screening sees
  them, its validation set;
- :mod:`~hub.federated.screening`: the verdict on every ``up/delta`` at ingest;
- :mod:`~hub.federated.candidates`: an aggregation into a candidate version, its
  judgement on the hub's validation set and its release;
- :mod:`~hub.federated.rounds`: open, announce, close, cancel, buffered flushes, and the
  scheduler's tick that resumes all of it after a restart.

docs/rounds.md has the design.
"""
