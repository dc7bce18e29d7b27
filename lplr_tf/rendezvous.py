"""The workers of a multi-worker cluster wait for each other, with a deadline, before TensorFlow.

TensorFlow's MultiWorkerMirroredStrategy blocks in C++, holding the GIL, until every worker of
TF_CONFIG's cluster has connected: a worker that never starts (a typo in an address, a host
that failed to boot, a firewall) leaves the others "Waiting for 1/2 tasks to connect" forever,
deaf to SIGTERM and to any Python timer. So each worker first meets every other one on the
ports of TF_CONFIG, in plain Python: it listens on its own port and connects to every other
task's port, saying who it is. It is done when it has reached every other task and every
other task has reached it; since every task applies the same rule, all of them leave together
(a task leaves only once its peers have already reached it). Then the listener closes and
TensorFlow's server takes the port. A worker still missing at the deadline is named in a
`ValueError` (exit code 2 from lplr-train).

Only the tasks that take part in the collective ("chief" and "worker") are awaited.
"""

import contextlib
import select
import socket
import time

COLLECTIVE_JOBS = ("chief", "worker")
_GREETING = b"lplr-rendezvous "
_RETRY_SECONDS = 0.5


def _split_address(address):
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _tasks(cluster):
    """[(job, index, address)] of the collective's tasks in `cluster` (TF_CONFIG's dict)."""
    return [
        (job, index, address)
        for job in COLLECTIVE_JOBS
        for index, address in enumerate(cluster.get(job) or [])
    ]


def _greet(address, me):
    """Connects to `address` and says who `me` is; returns whether it worked."""
    host, port = _split_address(address)
    try:
        with socket.create_connection((host, port), timeout=1.0) as connection:
            connection.sendall(_GREETING + f"{me[0]} {me[1]}\n".encode())
    except OSError:
        return False
    return True


def _read_greeting(listener):
    """Accepts one connection; returns the (job, index) it announced, or None (not a peer)."""
    try:
        connection, _ = listener.accept()
    except OSError:
        return None
    with connection:
        connection.settimeout(1.0)
        data = b""
        with contextlib.suppress(OSError):
            while not data.endswith(b"\n") and len(data) < 256:
                chunk = connection.recv(256)
                if not chunk:
                    break
                data += chunk
    if not data.startswith(_GREETING):
        return None  # e.g. an early gRPC probe of a peer already past the rendezvous
    try:
        job, index = data[len(_GREETING) :].decode().split()
        return job, int(index)
    except ValueError:
        return None


def wait_for_peers(config, timeout_seconds, clock=time.monotonic):
    """Returns once every other collective task of TF_CONFIG is up; raises at the deadline.

    Args:
      config: The parsed TF_CONFIG: {"cluster": {job: [host:port, ...]}, "task": {"type",
        "index"}}.
      timeout_seconds: How long to wait for the slowest peer.
      clock: Returns seconds (monotonic).

    Raises:
      ValueError: a peer did not start (or cannot be reached) within `timeout_seconds`,
        naming it, its address and the fixes.
    """
    tasks = _tasks(config["cluster"])
    me = (config["task"]["type"], int(config["task"]["index"]))
    addresses = {(job, index): address for job, index, address in tasks}
    if me not in addresses or len(tasks) < 2:
        return
    others = set(addresses) - {me}
    reached, reached_by = set(), set()
    listener = socket.socket(
        socket.AF_INET6 if ":" in addresses[me].rsplit(":", 1)[0] else socket.AF_INET
    )
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    deadline = clock() + timeout_seconds
    try:
        listener.bind(("", _split_address(addresses[me])[1]))
        listener.listen(len(tasks))
        next_try = clock()
        while reached != others or reached_by != others:
            now = clock()
            if now >= deadline:
                raise ValueError(
                    _timeout_message(
                        me, addresses, others - reached, others - reached_by, timeout_seconds
                    )
                )
            if now >= next_try:
                reached |= {peer for peer in others - reached if _greet(addresses[peer], me)}
                next_try = now + _RETRY_SECONDS
            readable, _, _ = select.select([listener], [], [], min(_RETRY_SECONDS, 0.1))
            if readable:
                peer = _read_greeting(listener)
                if peer in others:
                    reached_by.add(peer)
    except OSError as error:
        raise ValueError(
            f"distribute.multi_worker: cannot listen on {addresses[me]}, this task's address in "
            f"TF_CONFIG ({error.strerror}). Free the port or give this task another one."
        ) from error
    finally:
        listener.close()


def _timeout_message(me, addresses, unreachable, silent, timeout_seconds):
    missing = sorted(unreachable | silent)
    named = ", ".join(f"{job} {index} at {addresses[(job, index)]}" for job, index in missing)
    return (
        f"distribute.multi_worker: {named} did not start within {timeout_seconds:g} s (this is "
        f"{me[0]} {me[1]} at {addresses[me]}). Start the same lplr-train command on every host "
        "of TF_CONFIG's cluster, each with its own task index; check the addresses, ports and "
        "firewalls; or wait longer with distribute.multi_worker.timeout_seconds."
    )
