"""Sweeps: many training runs of one command, resumable, and their results.

- :mod:`~deepfill.sweeps.settings`: what a job's setting is (the one definition);
- :mod:`~deepfill.sweeps.jobs`: the ``job.json`` record of every run, what makes a rerun skip
  or continue it;
- :mod:`~deepfill.sweeps.multirun`: what a job checks about the multirun it belongs to;
- :mod:`~deepfill.sweeps.devices` and :mod:`~deepfill.sweeps.resolvers`: one GPU per job for
  local parallel sweeps, the seeds of replicates;
- :mod:`~deepfill.sweeps.results`, :mod:`~deepfill.sweeps.report`: the runs collected and
  aggregated over seeds, written as tables and a picture;
- :mod:`~deepfill.sweeps.best`: an Optuna search's best runs as a config group;
- :mod:`~deepfill.sweeps.callbacks`: the Hydra callback that writes the tables at the end.
"""
