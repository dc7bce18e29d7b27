"""Memory of one probe, estimated before anything is allocated, and the budget it must fit.

A dense probe holds, at its peak (host backend, N = n·O rows in "full" mode, n in "trace"):

    kernel     N²·4   Θ as returned (float32), kept by the caller for the next statistics
    kernel0    N²·4   Θ₀ (float32), kept by the caller for the drift (when it measures drift)
    workspace  N²·8   the float64 matrix of `kernel_statistics` (K − K₀, then K, then L)
    assembly          features of the blocked assembly and one block's temporaries
    solver            Lanczos bases ((m + 1)·N·8 each) and row-chunk temporaries
    linearized 3·N²·8 eigenvectors of K₀ and the eigensolver's workspace (only when the
                      linearized prediction is computed at this probe)

On a GPU (device backend) the kernel stays on the device, where the statistics hold K and
its Cholesky factor in float64 at once, plus the shifted copy being factored: 3·N²·8 in
place of the workspace, and the device assembly concatenates blocks (one more N²·4).

The matrix-free path (`matfree.matrix_free_spectrum`) needs only one block's features and
its Lanczos basis; its λ_min is an upper estimate (Ritz values bracket inward).

The budget honours the tightest of MemAvailable (/proc/meminfo) and a container's cgroup
limit minus its usage (v2 memory.max/memory.current, v1 memory.limit_in_bytes/
memory.usage_in_bytes); on a GPU, the memory TF's allocator may use on the device
(its `memory_limit`) minus what it holds now.
"""

import dataclasses
import pathlib

import tensorflow as tf

from lplr_tf.ntk import common

DEFAULT_FRACTION = 0.75
_FALLBACK_BYTES = 2 * 1024**3
_UNLIMITED = 1 << 60  # cgroup v1 reports "no limit" as a huge number
# Lanczos iterations assumed for the solver bases (the default cap of the solves).
_ITERATIONS = 128
_CHUNK_TEMPORARIES = 4 * (1 << 25)


class MemoryBudgetError(ValueError):
    """A probe does not fit the memory budget on any path (the message says the fixes)."""


def _read_int(path):
    try:
        text = pathlib.Path(path).read_text(encoding="ascii").strip()
    except OSError:
        return None
    if text == "max":
        return _UNLIMITED
    try:
        return int(text)
    except ValueError:
        return None


def available_host_bytes(root="/"):
    """Bytes this process may still allocate on the host, or None when nothing is readable.

    The minimum of MemAvailable and, for a cgroup with a limit, limit − usage.

    Args:
      root: Filesystem root to read /proc and /sys from (tests pass a fake tree).
    """
    root = pathlib.Path(root)
    candidates = []
    try:
        for line in (root / "proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                candidates.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (
        ("sys/fs/cgroup/memory.max", "sys/fs/cgroup/memory.current"),
        (
            "sys/fs/cgroup/memory/memory.limit_in_bytes",
            "sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        limit = _read_int(root / limit_file)
        if limit is not None and limit < _UNLIMITED:
            usage = _read_int(root / usage_file) or 0
            candidates.append(max(limit - usage, 0))
    return min(candidates) if candidates else None


def available_device_bytes(device):
    """Bytes TF may still allocate on a GPU (its allocator's limit minus current use)."""
    from tensorflow.python.client import device_lib  # TF's own device attributes

    name = tf.DeviceSpec.from_string(device)
    for attributes in device_lib.list_local_devices():
        spec = tf.DeviceSpec.from_string(attributes.name)
        if spec.device_type == name.device_type and (spec.device_index or 0) == (
            name.device_index or 0
        ):
            in_use = tf.config.experimental.get_memory_info(
                f"{spec.device_type}:{spec.device_index or 0}"
            )["current"]
            return max(int(attributes.memory_limit) - int(in_use), 0)
    return None


def memory_budget(fraction=DEFAULT_FRACTION, *, device=None, root="/"):
    """The default memory budget of one probe, in bytes.

    Args:
      fraction: Share of the available memory the probe may use (the rest stays for the
        model, the optimizer and the rest of the process).
      device: None for the host; a GPU name ("GPU:0") for the memory of that device.
      root: Filesystem root for the host readings (tests).

    Returns:
      int bytes: fraction × available (cgroup-aware, see the module docstring); 2 GiB when
      nothing can be read.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"memory_budget: fraction={fraction!r}; expected 0 < fraction <= 1.")
    available = available_host_bytes(root) if device is None else available_device_bytes(device)
    return int(fraction * available) if available is not None else _FALLBACK_BYTES


@dataclasses.dataclass(frozen=True)
class ProbeMemory:
    """Peak bytes of one probe by component (module docstring), and their total."""

    rows: int
    kernel: int
    kernel0: int
    workspace: int
    assembly: int
    solver: int
    linearized: int
    matrix_free: int

    @property
    def total(self):
        """Peak of the dense path."""
        return (
            self.kernel
            + self.kernel0
            + self.workspace
            + self.assembly
            + self.solver
            + self.linearized
        )


def probe_memory_bytes(
    model,
    x,
    output_mode="full",
    *,
    kernel0=True,
    linearized=False,
    device=False,
    max_block_rows=None,
):
    """Estimates the peak memory of one probe on `x`, before allocating anything.

    Args:
      model: The Keras model (built on first use).
      x: The probe set (n, *example_shape), array-like.
      output_mode: "full" (N = n·O) or "trace" (N = n).
      kernel0: Whether the caller keeps Θ₀ for the drift.
      linearized: Whether this probe also computes the linearized prediction (eigh of K₀).
      device: Whether the kernel and the statistics live on a GPU (device backend).
      max_block_rows: Cap on kernel rows per assembly block (default: the engine's).

    Returns:
      ProbeMemory.
    """
    from lplr_tf.ntk import empirical  # the engine knows its per-example sizes

    common.check_output_mode(output_mode, "probe_memory_bytes")
    x = common.as_batch(x, "x", "probe_memory_bytes", model)
    common.ensure_built(model, x)
    engine = empirical.get_engine(model, x[:1], "auto", output_mode, False)
    n = int(x.shape[0])
    rows = n * engine.rows_per_example
    floats = rows * rows
    block = engine.block_rows_cap(max_block_rows) // engine.rows_per_example
    block = max(1, min(block, n))
    assembly = 2 * block * engine.bytes_per_example + block * block * engine.bytes_per_pair
    if block < n:
        assembly += n * engine.bytes_per_example  # the column blocks' features, cached
    solver = (_ITERATIONS + 1) * rows * 8 + _CHUNK_TEMPORARIES
    # Matrix-free: one block's forward/backward and the Lanczos basis (full mode only).
    full_rows = n * engine.num_outputs
    matrix_free = 2 * block * engine.bytes_per_example + (_ITERATIONS + 1) * full_rows * 8
    return ProbeMemory(
        rows=rows,
        kernel=4 * floats * (2 if device else 1),
        kernel0=4 * floats if kernel0 else 0,
        workspace=8 * floats * (3 if device else 1),
        assembly=assembly,
        solver=solver,
        linearized=3 * 8 * floats if linearized else 0,
        matrix_free=matrix_free,
    )


@dataclasses.dataclass(frozen=True)
class ProbePlan:
    """Which path a probe takes: "dense" or "matrix_free", with the figures behind it."""

    path: str
    estimate: ProbeMemory
    budget: int


def _gib(num_bytes):
    return f"{num_bytes / 1024**3:.2f} GiB"


def choose_probe_path(model, x, output_mode="full", *, budget=None, **estimate_options):
    """Dense if its peak fits the budget, else matrix-free if that fits, else an error.

    Args:
      model, x, output_mode: As for `probe_memory_bytes`.
      budget: Bytes; default `memory_budget()` (of the GPU when `device=True` is passed).
      **estimate_options: kernel0, linearized, device, max_block_rows (probe_memory_bytes).

    Returns:
      ProbePlan.

    Raises:
      MemoryBudgetError: neither path fits; the message names the budget, both estimates
        and the fixes.
    """
    estimate = probe_memory_bytes(model, x, output_mode, **estimate_options)
    if budget is None:
        device = estimate_options.get("device")
        budget = memory_budget(device="GPU:0" if device else None)
    if estimate.total <= budget:
        return ProbePlan("dense", estimate, int(budget))
    if output_mode == "full" and estimate.matrix_free <= budget:
        return ProbePlan("matrix_free", estimate, int(budget))
    raise MemoryBudgetError(
        f"probe on {estimate.rows} kernel rows ({output_mode!r} mode): the dense probe needs "
        f"~{_gib(estimate.total)} (kernel {_gib(estimate.kernel)}, initial kernel "
        f"{_gib(estimate.kernel0)}, float64 workspace {_gib(estimate.workspace)}, assembly "
        f"{_gib(estimate.assembly)}, linearized prediction {_gib(estimate.linearized)}) and "
        f"the matrix-free probe ~{_gib(estimate.matrix_free)}"
        + ("" if output_mode == "full" else " (full mode only)")
        + f", more than the memory budget of {_gib(budget)}. Fixes: probe fewer examples "
        "(a smaller probe set), use output_mode='trace' (n rows instead of n·O), turn off "
        "the linearized prediction, raise the budget, or run on a machine with more memory."
    )
