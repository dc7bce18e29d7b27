"""The empirical NTK of a Keras model: public API, dispatch between implementations, caching.

Θ(x1, x2) = J(x1) J(x2)ᵀ with J = ∂vec f/∂θ over the model's trainable variables, the
*unnormalized* empirical NTK (the convention of neural-tangents). Probes report the
normalized K = Θ / n, where n is the number of examples.

The compiled functions of a (model, implementation, output mode, input shape) are built
once and kept in the per-model cache (`cache`, dropped with the model), so repeated
calls on the same model and batch shape — the trainer's probe at every logging step —
run the traced graphs without retracing, and see the variables' current values.

Memory: `memory_budget_bytes` bounds the whole call, the returned kernel included (it is
counted first; the rest is the working memory of the blocks). A kernel that alone exceeds
the budget is refused with a ValueError before anything is allocated. Time: one TF call
contracts at most `blocking.MAX_BLOCK_ROWS` kernel rows against as many, so `should_stop`
is polled every fraction of a second.
"""

import weakref

import tensorflow as tf

from lplr_tf.ntk import blocking, cache, common, jacobian, memory, structured

IMPLEMENTATIONS = ("auto", "jacobian", "structured")
_CALLER = "empirical_ntk"


class NTKEngine:
    """Compiled kernel functions for one model, implementation, output mode and input shape.

    Build through `get_engine` (cached); `empirical_ntk` is the public entry point.

    Attributes:
      implementation: "jacobian" or "structured", what "auto" resolved to.
      num_outputs: O, flattened outputs per example.
      num_fallback_params: parameters of the structured path that go through the general
        Jacobian path (0 for a fully known model; all of them for "jacobian").
    """

    def __init__(self, model, x, implementation, output_mode, jit_compile):
        model_ref = weakref.ref(model)  # the cache must not keep the model alive
        variables = common.trainable_tf_variables(model)
        if not variables:
            raise ValueError(
                f"{_CALLER}: model {model.name!r} has no trainable variables; expected at "
                "least one, since Θ = J Jᵀ is over the trainable parameters."
            )
        ids = {id(v) for v in variables}
        terms = structured.find_terms(model, ids)
        self.num_outputs = structured.record_calls(model, terms, x[:1])
        called = [t for t in terms if t.calls]
        covered = {id(v) for t in called for v in t.variables}
        fallback = [v for v in variables if id(v) not in covered]
        if implementation == "auto":
            implementation = "structured" if called else "jacobian"
        self.implementation = implementation
        self.output_mode = output_mode
        if implementation == "structured":
            impl = structured.StructuredFeatures(
                model_ref, called, fallback, self.num_outputs, output_mode
            )
            self.num_fallback_params = sum(int(v.shape.num_elements()) for v in fallback)
        else:
            impl = jacobian.JacobianFeatures(model_ref, variables, self.num_outputs, output_mode)
            self.num_fallback_params = impl.num_params
        activation_floats = int(tf.size(x[0])) + sum(
            common.num_elements(z) for t in called for _, z in t.calls
        )
        self.bytes_per_example = impl.bytes_per_example(activation_floats)
        r = self.rows_per_example
        # The Θ block plus the Gram temporaries of one term (per example pair).
        self.bytes_per_pair = 4 * (4 * r * r + (self.num_outputs if r == 1 else 0))
        self.features = tf.function(impl.features, jit_compile=jit_compile)
        self.contract = tf.function(impl.contract, jit_compile=jit_compile)

        def kernel(x1, x2):
            return impl.contract(impl.features(x1), impl.features(x2))

        def kernel_symmetric(x1):
            feats = impl.features(x1)
            return impl.contract(feats, feats)

        self._kernel = tf.function(kernel, jit_compile=jit_compile)
        self._kernel_symmetric = tf.function(kernel_symmetric, jit_compile=jit_compile)

    @property
    def rows_per_example(self):
        return self.num_outputs if self.output_mode == "full" else 1

    def block_rows_cap(self, max_block_rows=None):
        """Kernel rows of one block at most (a multiple of the rows per example, >= one)."""
        cap = blocking.MAX_BLOCK_ROWS if max_block_rows is None else int(max_block_rows)
        r = self.rows_per_example
        return max(r, cap - cap % r)

    def output_bytes(self, n1, n2):
        """Bytes of the returned kernel Θ(x1, x2) (float32: 4 per entry)."""
        return 4 * n1 * n2 * self.rows_per_example**2

    def tracing_count(self):
        """Total traces of the compiled functions (for tests: repeated calls add none)."""
        fns = (self.features, self.contract, self._kernel, self._kernel_symmetric)
        return sum(f.experimental_get_tracing_count() for f in fns)

    def __call__(
        self,
        x1,
        x2=None,
        block_size=None,
        memory_budget_bytes=None,
        devices=None,
        should_stop=None,
        as_numpy=False,
    ):
        n1 = int(x1.shape[0])
        n2 = n1 if x2 is None else int(x2.shape[0])
        n = max(n1, n2)
        on_gpu = (
            any("GPU" in d.upper() for d in devices)
            if devices
            else bool(tf.config.list_logical_devices("GPU"))
        )
        on_host = as_numpy or not on_gpu
        budget = memory_budget_bytes or memory.memory_budget(device=None if on_host else "GPU:0")
        output = self.output_bytes(n1, n2)
        if output >= budget:
            raise memory.MemoryBudgetError(
                f"{_CALLER}: the kernel alone needs {output} bytes ({n1 * self.rows_per_example}"
                f" × {n2 * self.rows_per_example} float32), more than the memory budget of "
                f"{int(budget)} bytes"
                + (
                    " (default: a share of the available memory, cgroup-aware)"
                    if memory_budget_bytes is None
                    else ""
                )
                + ". Fixes: fewer examples, output_mode='trace' (n rows instead of n·O), "
                "matrix_free_spectrum (no kernel is formed), or a larger memory_budget_bytes."
            )
        if block_size is None:
            block_size = blocking.choose_block_size(
                n, self.bytes_per_example, self.bytes_per_pair, budget - output, _CALLER
            )
            block_size = min(block_size, self.block_rows_cap() // self.rows_per_example)
        if devices and len(devices) > 1:
            block_size = min(block_size, -(-n // len(devices)))  # every device gets rows
        if block_size >= n:
            kernel = self._kernel_symmetric(x1) if x2 is None else self._kernel(x1, x2)
            return kernel.numpy() if as_numpy else kernel
        # Keep the column blocks' features when all of them fit in half the working budget.
        keep = 2 * n * self.bytes_per_example <= budget - output
        kernel = blocking.assemble(
            self.features,
            self.contract,
            x1,
            x2,
            block_size,
            self.rows_per_example,
            keep,
            devices,
            should_stop=should_stop,
            on_host=on_host,
        )
        if as_numpy:
            return kernel
        return kernel if isinstance(kernel, tf.Tensor) else tf.convert_to_tensor(kernel)


def get_engine(model, x, implementation="auto", output_mode="full", jit_compile=False):
    """The cached NTKEngine for this model, configuration and per-example input shape."""
    key = (
        "engine",
        implementation,
        output_mode,
        bool(jit_compile),
        tuple(x.shape[1:]),
        x.dtype.name,
        cache.variables_key(model),
    )
    return cache.cached(
        model, key, lambda: NTKEngine(model, x, implementation, output_mode, jit_compile)
    )


def validate_options(implementation, output_mode, block_size, memory_budget_bytes):
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"{_CALLER}: implementation={implementation!r}; expected one of "
            f"{IMPLEMENTATIONS}. Use 'auto' unless you are comparing implementations."
        )
    common.check_output_mode(output_mode, _CALLER)
    if block_size is not None and (not isinstance(block_size, int) or block_size < 1):
        raise ValueError(
            f"{_CALLER}: block_size={block_size!r}; expected a positive int (examples per "
            "block) or None to choose it from the memory budget."
        )
    if memory_budget_bytes is not None and not memory_budget_bytes > 0:
        raise ValueError(
            f"{_CALLER}: memory_budget_bytes={memory_budget_bytes!r}; expected a positive "
            "number of bytes or None for the default (a share of the available memory)."
        )


def empirical_ntk(
    model,
    x1,
    x2=None,
    *,
    output_mode="full",
    implementation="auto",
    block_size=None,
    memory_budget_bytes=None,
    jit_compile=False,
    devices=None,
    should_stop=None,
    as_numpy=False,
):
    """The empirical NTK Θ(x1, x2) = J(x1) J(x2)ᵀ of a Keras model (unnormalized).

    J = ∂vec f/∂θ over `model.trainable_variables`, with the model called as
    `model(x, training=False)` (BatchNormalization in inference mode, dropout off).
    Outputs are flattened per example to O values. The kernel is *not* divided by n, as in
    neural-tangents; the normalized kernel of the LPLR theory is K = Θ / n.

    Args:
      model: A built or unbuilt Keras model (Sequential, functional, subclassed) taking
        one tensor of shape (n, *example_shape).
      x1: Array-like (n1, *example_shape).
      x2: Array-like (n2, *example_shape), or None for Θ(x1, x1) (computed once and
        mirrored, exactly symmetric).
      output_mode: "full" → shape (n1·O, n2·O), example-major: row i·O + o is output o of
        example i. "trace" → shape (n1, n2), (1/O) Σ_o Θ[(i,o),(j,o)].
      implementation: "structured" (layer-wise contraction for Dense, Conv2D, NTKDense,
        NTKConv2D, BatchNormalization; other layers' variables through the Jacobian path),
        "jacobian" (per-example parameter Jacobians, any model), or "auto" (structured
        when the model has any supported layer, else jacobian).
      block_size: Examples per block; forces blocked assembly. None: chosen from the budget
        and capped at `blocking.MAX_BLOCK_ROWS` kernel rows per block.
      memory_budget_bytes: Budget of the whole call in bytes, the returned kernel included
        (the rest bounds the blocks' working memory); default `memory.memory_budget()`, a
        share of the available host memory (cgroup-aware) or of the GPU's.
      jit_compile: XLA-compile the kernel functions (pinned to False by default).
      devices: Optional device names (e.g. the replicas of a tf.distribute strategy,
        `strategy.extended.worker_devices`): the kernel is assembled from row blocks, block i
        computed on devices[i % len(devices)], so that each device holds its share of the
        features. The result is identical to the single-device kernel.
      should_stop: Optional zero-argument callable, polled before every block; when it
        returns True the assembly stops and `ProbeInterrupted` is raised (`interrupt`).
      as_numpy: Return a NumPy array on the host instead of a tf.Tensor. A TF ↔ NumPy
        conversion always copies, so for a large kernel headed for `kernel_statistics` on
        the host this saves one copy of the kernel.

    Returns:
      tf.Tensor (or NumPy array) in the model's compute dtype (float32 by default),
      computed with TF32 off. On a GPU, a blocked kernel stays on the device.

    Raises:
      ValueError: unknown implementation or output_mode, bad block_size or budget, or x1/x2
        whose per-example shapes do not match each other or the model's input.
      MemoryBudgetError (a ValueError): the kernel alone exceeds the memory budget.
      ProbeInterrupted: should_stop() returned True.
    """
    validate_options(implementation, output_mode, block_size, memory_budget_bytes)
    x1 = common.as_batch(x1, "x1", _CALLER, model)
    if x2 is not None:
        x2 = common.as_batch(x2, "x2", _CALLER, model)
        common.check_same_example_shape(x1, x2, _CALLER)
    common.ensure_built(model, x1)
    engine = get_engine(model, x1, implementation, output_mode, jit_compile)
    with common.tf32_disabled():
        return engine(x1, x2, block_size, memory_budget_bytes, devices, should_stop, as_numpy)
