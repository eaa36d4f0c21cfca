"""The submitter side: start a run on a backend (local process, Docker, Kubernetes, WML), cancel
it, and follow it through the store (`watch`). One registry of backends (`backend`).

May import: `job.runstore`, `job.config`, `job.errors`, `job.logs`. Never imports TensorFlow,
numpy or `job.training`, so every submitter command starts in a fraction of a second.
"""
