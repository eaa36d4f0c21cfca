"""Work-arounds for Keras 3 under MultiWorkerMirroredStrategy (keras-team/keras#20585).

Keras 3.15's TensorFlow trainer breaks on two lines when the strategy is multi-worker, found by
running two workers here:
- `_maybe_symbolic_build` averages the first input batch across workers with
  `strategy.reduce("MEAN", batch, axis=None)`, which CollectiveAllReduce cannot do for a
  (features, labels) structure; the batch is only used to build the model, so one local
  replica's share does the same job.
- `reduce_per_replica` averages the per-step logs with `axis=0`, which fails for the scalar
  loss and metrics; scalars need `axis=None`.
Both patches change behaviour only under a multi-worker strategy. `steps_per_execution` above 1
also fails there (a graph error inside the multi-step loop), so job.plan uses 1 for it.
"""

from __future__ import annotations

import types


def patch_for_multi_worker(model) -> None:
    import tensorflow as tf
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer

    def local_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                batch = next(it)
                data_batch = tree.map_structure(
                    lambda v: (
                        self.distribute_strategy.experimental_local_results(v)[0]
                        if isinstance(v, tf.distribute.DistributedValues)
                        else v
                    ),
                    batch,
                )
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = types.MethodType(local_symbolic_build, model)

    if getattr(trainer.reduce_per_replica, "_job_patched", False):
        return
    original = trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if not (
            trainer._collective_all_reduce_multi_worker(strategy) and reduction in ("mean", "auto")
        ):
            return original(values, strategy, reduction)

        def mean(v):
            if not trainer._is_per_replica_instance(v):
                return v
            rank = strategy.experimental_local_results(v)[0].shape.rank
            return strategy.reduce("MEAN", v, axis=0 if rank else None)

        return tree.map_structure(mean, values)

    reduce_per_replica._job_patched = True
    trainer.reduce_per_replica = reduce_per_replica
