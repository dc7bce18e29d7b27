"""The tf.distribute strategy of a run, chosen by gin.

    experiment.run.strategy = @distribute.default       # one device (the default)
    experiment.run.strategy = @distribute.mirrored      # several GPUs on one host
    distribute.mirrored.devices = ['/gpu:0', '/gpu:1']  #   (default: every GPU, or the CPU)
    experiment.run.strategy = @distribute.multi_worker  # several hosts (TF_CONFIG)
    experiment.run.strategy = @distribute.tpu           # a TPU
    distribute.tpu.address = 'my-tpu'                   #   name or grpc:// address ('local'
    distribute.tpu.zone = 'us-central2-b'               #   on a TPU VM); zone and project
    distribute.tpu.project = 'my-project'               #   only for a remote TPU by name

`multi_worker` reads the cluster from the TF_CONFIG environment variable of each process and
waits at most `distribute.multi_worker.timeout_seconds` (default 600) for every worker to
start; a worker that never comes stops the others with a message naming it (exit code 2).
Everything that builds models or steps runs under `strategy.scope()` and never asks which
strategy is active.
"""

import json
import os

import gin
import tensorflow as tf

from lplr_tf import validation
from lplr_tf.rendezvous import wait_for_peers


def _check_tf_config():
    """The parsed TF_CONFIG of this process, or a ValueError naming what is wrong."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ValueError(
            "distribute.multi_worker needs the TF_CONFIG environment variable "
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
    return config


def _tpu_strategy(address, zone, project):
    if address is None:
        raise ValueError(
            "distribute.tpu needs distribute.tpu.address: the TPU name, a grpc:// address, "
            "or 'local' on a TPU VM."
        )
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=address, zone=zone, project=project
        )
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(
            f"No TPU reachable at distribute.tpu.address = {address!r} (zone = {zone!r}, "
            f"project = {project!r}): {reason}. On a TPU VM use distribute.tpu.address = "
            "'local'; for a remote TPU give its name with zone and project, or its "
            "grpc://host:port address."
        ) from error
    return tf.distribute.TPUStrategy(resolver)


@gin.configurable(module="distribute")
def default():
    """The default strategy: one device (the first GPU when there is one, else the CPU)."""
    return tf.distribute.get_strategy()


@gin.configurable(module="distribute")
def mirrored(devices=None):
    """Data-parallel replicas on one host (`distribute.mirrored.devices`; default every GPU)."""
    return tf.distribute.MirroredStrategy(devices=devices)


@gin.configurable(module="distribute")
def multi_worker(timeout_seconds=600):
    """Data-parallel replicas over several hosts, the cluster read from TF_CONFIG.

    Every worker first waits, for at most `timeout_seconds`, until every other worker of the
    cluster is up (`rendezvous.wait_for_peers`): TensorFlow itself would wait forever for a
    peer that never starts, unable to be interrupted.
    """
    config = _check_tf_config()
    timeout = validation.number(
        "distribute.multi_worker.timeout_seconds", timeout_seconds, 0.0, strict=True, example=600
    )
    wait_for_peers(config, timeout)
    return tf.distribute.MultiWorkerMirroredStrategy()


@gin.configurable(module="distribute")
def tpu(address=None, zone=None, project=None):
    """A TPU: its name or grpc:// address (`'local'` on a TPU VM), zone and project."""
    return _tpu_strategy(address, zone, project)


def is_chief(strategy):
    """Whether this process writes results (one process, or the chief / worker 0 of a cluster)."""
    return bool(strategy.extended.should_checkpoint)


def is_multi_worker(strategy):
    """Whether the strategy is MultiWorkerMirrored over several processes."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    cluster = strategy.cluster_resolver.cluster_spec().as_dict()
    return sum(len(tasks) for tasks in cluster.values()) > 1
