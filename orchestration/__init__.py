"""Ray Tune + MLflow orchestration of tood trainings: grids, keys and prefixes, launch and resume.

``tood`` is imported first so that its process settings for repeatable CPU training (MKL's,
see ``tood/__init__.py``) are in the environment before any module here loads torch.
"""
import tood  # noqa: F401
