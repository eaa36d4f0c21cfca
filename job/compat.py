"""Work-arounds for TensorFlow's multi-worker support: Keras 3 under MultiWorkerMirroredStrategy
(keras-team/keras#20585), and a bounded wait for peers at start-up.

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


def bound_peer_registration(timeout_seconds: int) -> None:
    """Make MultiWorkerMirroredStrategy give up on a peer that never joins.

    Creating the strategy registers this task with TensorFlow's coordination service and waits
    for every other task, by default for an hour, inside native code that holds the GIL, so no
    Python watchdog can run meanwhile. Configuring the service first, the way the strategy would
    (tensorflow/python/distribute/collective_all_reduce_strategy.py), with a registration
    timeout turns that wait into an error after `timeout_seconds` (job.distribute.peer_errors
    makes it exit 75). Private API: where it is missing, the strategy's default stands.
    """
    import tensorflow as tf

    try:
        from tensorflow.python.distribute import multi_worker_util
        from tensorflow.python.eager import context
    except ImportError:
        return
    try:
        from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2 as pb
    except ImportError:
        try:
            from tensorflow.tsl.protobuf import coordination_config_pb2 as pb
        except ImportError:
            return
    if context.context().coordination_service is not None:
        return
    spec = tf.distribute.cluster_resolver.TFConfigClusterResolver().cluster_spec()
    jobs = [
        pb.CoordinatedJob(name=job, num_tasks=spec.num_tasks(job))
        for job in ("chief", "worker")
        if job in spec.jobs
    ]
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=multi_worker_util.coordination_leader(spec),
        coordinated_jobs=jobs,
        cluster_register_timeout_in_ms=timeout_seconds * 1000,
    )
    service = context.context().coordination_service
    if "cluster_register_with_barrier" in type(service).DESCRIPTOR.fields_by_name:
        # The leader itself waits for the others at a barrier with that timeout; without it,
        # only the non-leaders' registration is bounded and worker 0 waits forever.
        service.cluster_register_with_barrier = True
