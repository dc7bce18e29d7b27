"""The tf.distribute strategy of a run, chosen by gin.

    distribute.strategy = 'default' | 'mirrored' | 'multi_worker' | 'tpu'
    distribute.devices = ['/gpu:0', '/gpu:1']        # mirrored (default: every GPU, or CPU)
    distribute.tpu = 'my-tpu'                         # tpu: name or grpc:// address ('local'
    distribute.zone = 'us-central2-b'                 #      on a TPU VM); zone and project
    distribute.project = 'my-project'                 #      only for a remote TPU by name

`multi_worker` reads the cluster from the TF_CONFIG environment variable of each process.
Everything that builds models or steps runs under `strategy.scope()` and never asks which
strategy is active.
"""

import json
import os

import gin
import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def _check_tf_config():
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ValueError(
            "distribute.strategy = 'multi_worker' needs the TF_CONFIG environment variable "
            '(the cluster and this process\'s task), e.g. TF_CONFIG=\'{"cluster": {"worker": '
            '["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}\'.'
        )
    try:
        config = json.loads(raw)
        config["cluster"]["worker"], config["task"]["index"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"TF_CONFIG = {raw!r} is not valid: expected JSON with cluster.worker (a list of "
            "host:port) and task.type / task.index."
        ) from error


def _tpu_strategy(tpu, zone, project):
    if tpu is None:
        raise ValueError(
            "distribute.strategy = 'tpu' needs distribute.tpu: the TPU name, a grpc:// address, "
            "or 'local' on a TPU VM."
        )
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=tpu, zone=zone, project=project
        )
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        raise ValueError(
            f"No TPU reachable at distribute.tpu = {tpu!r} (zone = {zone!r}, project = "
            f"{project!r}): {str(error).splitlines()[0] if str(error) else type(error).__name__}. "
            "On a TPU VM use distribute.tpu = 'local'; for a remote TPU give its name with zone "
            "and project, or its grpc://host:port address."
        ) from error
    return tf.distribute.TPUStrategy(resolver)


@gin.configurable("distribute")
def make_strategy(strategy="default", devices=None, tpu=None, zone=None, project=None):
    """Returns the tf.distribute.Strategy named by `strategy`.

    Raises:
      ValueError: an unknown strategy, a missing or malformed TF_CONFIG, or no reachable TPU.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"distribute.strategy = {strategy!r}; expected one of {STRATEGIES}.")
    if strategy == "default":
        return tf.distribute.get_strategy()
    if strategy == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices)
    if strategy == "multi_worker":
        _check_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    return _tpu_strategy(tpu, zone, project)


def is_chief(strategy):
    """Whether this process writes results (one process, or the chief / worker 0 of a cluster)."""
    return bool(strategy.extended.should_checkpoint)


def is_multi_worker(strategy):
    """Whether the strategy is MultiWorkerMirrored over several processes."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    cluster = strategy.cluster_resolver.cluster_spec().as_dict()
    return sum(len(tasks) for tasks in cluster.values()) > 1
