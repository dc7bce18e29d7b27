"""Blocked assembly of a kernel under a memory budget, in bounded, interruptible steps.

The kernel Θ(x1, x2) is assembled from blocks Θ(x1[I], x2[J]) over example blocks I, J.
Each block needs the *features* of its two example blocks (activations and cotangents, or
per-example gradients, `bytes_per_example` each) and a few (|I|·O × |J|·O) temporaries
(`bytes_per_pair` per example pair). The block size b is the largest with

    2·b·bytes_per_example + b²·bytes_per_pair <= working budget,

where the working budget is what remains of the caller's budget once the assembled output
(n1·n2·O² floats) is counted. Blocks are also capped at `MAX_BLOCK_ROWS` kernel rows, so
that every single TF call is short (a fraction of a second on a CPU for an MLP) and
`should_stop` is polled often. Every entry of Θ is the same dot products whatever the
blocking, so blocked and unblocked kernels agree to float rounding.

On the host the blocks are written into one preallocated NumPy array (no other N²
temporary). On a GPU (`on_host=False`) the row panels stay on the device and are
concatenated there (the panels and the result: twice the kernel, transiently).
"""

import contextlib
import math

import numpy as np
import tensorflow as tf

from lplr_tf.ntk import interrupt

# Kernel rows of one block (b·O in "full" mode): bounds the time of one contraction call.
MAX_BLOCK_ROWS = 4096


def choose_block_size(n, bytes_per_example, bytes_per_pair, budget, caller):
    """Largest example-block size (<= n) whose working memory fits `budget` bytes."""
    if budget <= 0:
        raise ValueError(
            f"{caller}: memory_budget_bytes={budget}; expected a positive number of bytes."
        )
    e, c = float(bytes_per_example), float(bytes_per_pair)
    b = int((-2 * e + math.sqrt(4 * e * e + 4 * c * budget)) / (2 * c))
    if b < 1:
        need = int(2 * e + c)
        raise ValueError(
            f"{caller}: memory_budget_bytes={budget} is below the ~{need} bytes one "
            "example pair needs; expected a larger budget. Raise memory_budget_bytes or pass "
            "block_size explicitly."
        )
    return min(b, n)


def block_starts(n, block_size):
    """Block boundaries with sizes differing by at most one (at most two traced shapes)."""
    num_blocks = -(-n // block_size)
    edges = np.linspace(0, n, num_blocks + 1).round().astype(int)
    return list(zip(edges[:-1], edges[1:]))


def assemble(
    features_fn,
    contract_fn,
    x1,
    x2,
    block_size,
    rows_per_example,
    cache_features,
    devices=None,
    should_stop=None,
    on_host=True,
):
    """Assembles Θ(x1, x2) from blocks; x2=None means the symmetric kernel Θ(x1, x1).

    Args:
      features_fn: x_block (b, ...) → features tuple.
      contract_fn: (features1, features2) → Θ block, shape (b1·r, b2·r).
      x1: (n1, ...) tensor. x2: (n2, ...) tensor or None.
      block_size: Examples per block.
      rows_per_example: r = O in "full" mode, 1 in "trace" mode.
      cache_features: Keep the column blocks' features instead of recomputing them for
        every row block (when they fit the budget).
      devices: Optional device names; row block i is computed on devices[i % len(devices)]
        (e.g. the replicas of a tf.distribute strategy), so each device holds its share.
      should_stop: Optional callable polled before every block (`interrupt`).
      on_host: Write the blocks into a NumPy array (True) or keep them on the device.

    Returns:
      (n1·r, n2·r), example-major: a NumPy array when on_host, else a tf.Tensor.
    """
    symmetric = x2 is None
    rows = block_starts(int(x1.shape[0]), block_size)
    cols = rows if symmetric else block_starts(int(x2.shape[0]), block_size)
    source = x1 if symmetric else x2
    r = rows_per_example
    cache = {}

    def on_device(k):
        return tf.device(devices[k % len(devices)]) if devices else contextlib.nullcontext()

    def column_features(j):
        if j in cache:
            return cache[j]
        start, stop = cols[j]
        with on_device(j):
            feats = features_fn(source[start:stop])
        if cache_features:
            cache[j] = feats
        return feats

    if not on_host:
        panels = []
        for i, (i0, i1) in enumerate(rows):
            with on_device(i):
                interrupt.check(should_stop, "kernel assembly")
                f1 = features_fn(x1[i0:i1])
                blocks = []
                for j in range(len(cols)):
                    interrupt.check(should_stop, "kernel assembly")
                    blocks.append(contract_fn(f1, column_features(j)))
            panels.append(tf.concat(blocks, axis=1))
        return tf.concat(panels, axis=0)

    out = None
    for i, (i0, i1) in enumerate(rows):
        with on_device(i):
            interrupt.check(should_stop, "kernel assembly")
            f1 = column_features(i) if symmetric else features_fn(x1[i0:i1])
            for j in range(i if symmetric else 0, len(cols)):
                interrupt.check(should_stop, "kernel assembly")
                f2 = f1 if symmetric and i == j else column_features(j)
                block = contract_fn(f1, f2).numpy()
                j0, j1 = cols[j]
                if out is None:
                    shape = (int(x1.shape[0]) * r, int(source.shape[0]) * r)
                    out = np.empty(shape, block.dtype)
                out[i0 * r : i1 * r, j0 * r : j1 * r] = block
                if symmetric and i != j:
                    out[j0 * r : j1 * r, i0 * r : i1 * r] = block.T
        if symmetric:
            cache.pop(i, None)  # row block i's features are not needed again
    return out
