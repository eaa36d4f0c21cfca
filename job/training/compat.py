"""Every difference between the TensorFlow/Keras versions the job runs on, in one place.

Supported: TensorFlow 2.14 with Keras 2 (WML's `tensorflow_rt24.1-py3.11` runtime; `import
keras` is Keras 2.14 there), TensorFlow 2.18 with Keras 3.5 (WML's Runtime 25.1,
`runtime-25.1-py3.12`; 3.5 is the oldest Keras TensorFlow 2.18 accepts, IBM names none) and
everything up to TensorFlow 2.21 with Keras 3.15 (the image). Each difference is detected by the
feature itself (a parameter, a module), never by comparing version numbers, so a version in
between takes whichever path it supports. What differs:

- Exporting a SavedModel: Keras 3.15 has `Model.export(path, format="tf_saved_model",
  verbose=False)`; Keras 3.5 takes no `verbose`, and Keras 2.13-2.15 has `Model.export(path)`,
  which writes the same kind of SavedModel (a `serve` endpoint and a `serving_default`
  signature) and takes neither. Both print every endpoint's signature to stdout, which is the
  run's report (it ends in `Results: ...`), so that print is swallowed. `export_saved_model`.
- Multi-worker training: Keras 3.15's TensorFlow trainer breaks on two lines under
  MultiWorkerMirroredStrategy (keras-team/keras#20585), found by running two workers here:
  `_maybe_symbolic_build` averages the first input batch across workers with
  `strategy.reduce("MEAN", batch, axis=None)`, which CollectiveAllReduce cannot do for a
  (features, labels) structure (the batch is only used to build the model, so one local
  replica's share does the same job); and `reduce_per_replica` averages the per-step logs with
  `axis=0`, which fails for the scalar loss and metrics (scalars need `axis=None`). Keras 3.5
  has both lines too, and two more differences, found the same way on TensorFlow 2.18: its
  epoch iterator is not iterable (`enumerate_epoch()` yields (step, iterator) pairs, Keras
  3.15's iterator yields (first step, last step, iterator)), and its variables have no
  `synchronization`, so a metric's variables are each worker's own and the loss and accuracy
  of an epoch or a test pass would be one worker's share of the data: the workers would then
  disagree, about StopAtAccuracy's target too. Where `keras.Variable` takes no
  `synchronization`, the metrics' summed variables are summed across workers while the logs
  are read. Keras 2 has none of this (no `keras.src.backend.tensorflow`; its metrics are
  synchronized on read), so nothing is patched there. `patch_for_multi_worker`.
  `steps_per_execution` above 1 also fails under Keras 3's multi-worker loop (a graph error),
  so job.training.plan uses 1 for it.
- Op determinism: only switching it on has a public spelling; `op_determinism`.
- Random streams: Keras 3 keeps Dropout's random state in a variable outside the weights file;
  Keras 2 has none to carry. `random_states`.
- The optimizer's moving average of the weights (EMA): both keep it in
  `optimizer._model_variables_moving_average`, Keras 3 in the order of the weights it was built
  with (`_get_variable_index`, Keras 3.5 too), Keras 2 through `_index_dict`, both on the inner
  optimizer of a loss-scale wrapper (float16); Keras 3's `SwapEMAWeights` callback does not
  exist in Keras 2. `averaged_weights`.
- Bounding the wait for peers: TensorFlow's coordination-service protobufs moved between
  versions (`tensorflow.tsl` in 2.14 and 2.18, `tensorflow.compiler.xla.tsl` in 2.21);
  `bound_peer_registration` tries both. Only 2.21's has `cluster_register_with_barrier`.

Everything else the job uses (`keras.Input(dtype=...)`, `Rescaling`, `CosineDecay` with
`warmup_target`/`warmup_steps`, `optimizer.build`, `.weights.h5` weights with the optimizer's
state, `.keras` model files, mixed-precision policies) has the same spelling in all of them, and
tests/test_runtimes.py proves it by running the WML model-definition zip on TensorFlow 2.14 and
2.18, one worker and two.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import types


def export_saved_model(model, path: str) -> None:
    """Write `model` as a SavedModel (for TF Serving and WML deployments) at `path`."""
    parameters = inspect.signature(model.export).parameters
    if "verbose" in parameters:
        model.export(path, format="tf_saved_model", verbose=False)
        return
    # Keras 3.5 and 2.13-2.15 print every endpoint's signature to stdout, the run's report.
    options = {"format": "tf_saved_model"} if "format" in parameters else {}
    with contextlib.redirect_stdout(io.StringIO()):
        model.export(path, **options)


def op_determinism(on: bool) -> None:
    """TensorFlow's op determinism: kernels that would pick a faster, order-dependent reduction
    pick a fixed one. Switching it off has no public spelling (only `enable_op_determinism`
    is in tf.config.experimental, in 2.14 as in 2.21), so the framework's own is used; it
    matters for a process that trains twice (tests, `verify --retrain`)."""
    import tensorflow as tf
    from tensorflow.python.framework import config as framework_config

    if on:
        tf.config.experimental.enable_op_determinism()
    elif framework_config.is_op_determinism_enabled():
        framework_config.disable_op_determinism()


def random_states(model) -> list:
    """The variables of the model's own random streams (Dropout's), which a weights file leaves
    out: Keras 3 keeps each layer's SeedGenerator state, [seed, calls so far], beside the
    weights, not among them. A checkpoint carries their values so that a resumed run draws what
    the uninterrupted one would have (job.training.checkpoint). Keras 2's Dropout keeps no
    such variable: none is found, and a resume there is not bit-identical."""
    return [v for v in model.variables if getattr(v, "path", "").endswith("seed_generator_state")]


def averaged_weights(model) -> list[tuple]:
    """(weight, its moving average) for each trainable weight; [] when the optimizer keeps no
    average (EMA_MOMENTUM=0)."""
    # Under mixed_float16 compile() wraps the optimizer in a loss-scale optimizer; the average is
    # the inner one's (Keras 3's wrapper says use_ema=False, Keras 2's has no average at all).
    opt = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    if not getattr(opt, "use_ema", False):
        return []
    averages = opt._model_variables_moving_average
    if hasattr(opt, "_get_variable_index"):  # Keras 3
        index = opt._get_variable_index
    else:  # Keras 2
        index = lambda v: opt._index_dict[opt._var_key(v)]  # noqa: E731
    return [(v, averages[index(v)]) for v in model.trainable_variables]


def patch_for_multi_worker(model) -> None:
    """Work around keras-team/keras#20585 and, on Keras 3.5, the workers' own metrics (module
    docstring); a no-op on Keras 2."""
    import keras
    import tensorflow as tf

    try:
        from keras.src import tree
        from keras.src.backend.tensorflow import trainer
    except ImportError:
        return

    def local_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None:
            # Keras 3.15 iterates the epoch iterator itself, (first step, last step, iterator)
            # per execution; Keras 3.5's has only enumerate_epoch(), (step, iterator).
            steps = iterator if hasattr(iterator, "__iter__") else iterator.enumerate_epoch()
            for *_, it in steps:
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

    if "synchronization" not in inspect.signature(keras.Variable.__init__).parameters:
        # Keras 3.5: no variable is synchronized on read, so each worker's metrics count its own
        # share of the data only; the figures of each epoch and test pass sum every worker's.
        local_results = model._get_metrics_result_or_logs

        def every_workers_results(self, logs):
            strategy = self.distribute_strategy
            if not trainer._collective_all_reduce_multi_worker(strategy):
                return local_results(logs)
            sums = [v for m in self.metrics for v in m.variables if v.aggregation == "sum"]
            own = [tf.identity(v.value) for v in sums]
            for variable, value in zip(sums, own, strict=True):
                variable.assign(strategy.reduce("SUM", value, axis=None))
            try:
                return local_results(logs)
            finally:
                for variable, value in zip(sums, own, strict=True):
                    variable.assign(value)

        model._get_metrics_result_or_logs = types.MethodType(every_workers_results, model)

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
    timeout turns that wait into an error after `timeout_seconds` (job.training.distribute.
    peer_errors makes it exit 75). Private API: where it is missing, the strategy's default
    stands.
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
