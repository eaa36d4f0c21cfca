"""The notebook, as software: data, inputs, the model, fit, evaluation, artifacts, and the
plumbing one training process needs (its lifecycle, checkpoints, preemption, hardware).

`train.run(config, ...)` reads top to bottom like the notebook. Version differences between
the TensorFlow/Keras releases the job runs on live in `compat` only.

May import: `job.runstore`, `job.config`, `job.errors`, `job.logs`. Never `job.launch`.
"""
