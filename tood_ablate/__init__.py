"""The ``tood-ablate`` command: the top layer, dispatching to ``orchestration`` (run, resume,
status) and ``reports`` (report, diagnose, compare, publish)."""
