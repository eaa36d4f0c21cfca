"""Where runs live: a local folder or an S3/COS bucket, and everything written to or read from it.

Holds the store interface (`store`) and its two implementations (`local`, `s3`), the layout
(`layout`: every key name and URI rule), publication (`publish`), reading runs back (`reader`),
the owner lease (`lease`), the champion registry (`champion`), and pruning (`prune`).

May import: `job.config`, `job.errors`, `job.logs`. Knows nothing of training or of how a run
was started; never imports TensorFlow or numpy (the submitter uses it and starts fast).
"""
