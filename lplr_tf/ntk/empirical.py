"""The empirical NTK of a Keras model: public API, dispatch between implementations, caching.

Θ(x1, x2) = J(x1) J(x2)ᵀ with J = ∂vec f/∂θ over the model's trainable variables, the
*unnormalized* empirical NTK (the convention of neural-tangents). Probes report the
normalized K = Θ / n, where n is the number of examples.

The compiled functions of a (model, implementation, output mode, input shape) are built
once and cached in a WeakKeyDictionary keyed by the model (dropped with it), so repeated
calls on the same model and batch shape — the trainer's probe at every logging step —
run the traced graphs without retracing, and see the variables' current values.
"""

import weakref

import tensorflow as tf

from lplr_tf.ntk import blocking, common, jacobian, structured

IMPLEMENTATIONS = ("auto", "jacobian", "structured")
_CALLER = "empirical_ntk"

# The only module-level state: compiled kernels per live model (see module docstring).
_ENGINES = weakref.WeakKeyDictionary()


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

    def tracing_count(self):
        """Total traces of the compiled functions (for tests: repeated calls add none)."""
        fns = (self.features, self.contract, self._kernel, self._kernel_symmetric)
        return sum(f.experimental_get_tracing_count() for f in fns)

    def __call__(self, x1, x2=None, block_size=None, memory_budget_bytes=None, devices=None):
        n = max(int(x1.shape[0]), 0 if x2 is None else int(x2.shape[0]))
        budget = memory_budget_bytes or blocking.default_memory_budget()
        if block_size is None:
            block_size = blocking.choose_block_size(
                n, self.bytes_per_example, self.bytes_per_pair, budget, _CALLER
            )
        if devices and len(devices) > 1:
            block_size = min(block_size, -(-n // len(devices)))  # every device gets rows
        if block_size >= n:
            return self._kernel_symmetric(x1) if x2 is None else self._kernel(x1, x2)
        # Keep the column blocks' features when all of them fit in half the budget.
        cache = 2 * n * self.bytes_per_example <= budget
        return blocking.assemble(
            self.features,
            self.contract,
            x1,
            x2,
            block_size,
            self.rows_per_example,
            cache,
            devices,
        )


def get_engine(model, x, implementation="auto", output_mode="full", jit_compile=False):
    """The cached NTKEngine for this model, configuration and per-example input shape."""
    key = (
        implementation,
        output_mode,
        bool(jit_compile),
        tuple(x.shape[1:]),
        x.dtype.name,
        tuple(id(v) for v in model.trainable_variables),
    )
    engines = _ENGINES.setdefault(model, {})
    if key not in engines:
        engines[key] = NTKEngine(model, x, implementation, output_mode, jit_compile)
    return engines[key]


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
            "number of bytes or None for the default (a quarter of available memory)."
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
      block_size: Examples per block; forces blocked assembly. None: chosen from the budget.
      memory_budget_bytes: Working-memory budget for choosing the block size; default a
        quarter of MemAvailable on CPU, 2 GiB on GPU.
      jit_compile: XLA-compile the kernel functions (pinned to False by default).
      devices: Optional device names (e.g. the replicas of a tf.distribute strategy,
        `strategy.extended.worker_devices`): the kernel is assembled from row blocks, block i
        computed on devices[i % len(devices)], so that each device holds its share of the
        features. The result is identical to the single-device kernel.

    Returns:
      tf.Tensor in the model's compute dtype (float32 by default), computed with TF32 off.

    Raises:
      ValueError: unknown implementation or output_mode, bad block_size or budget, or x1/x2
        whose per-example shapes do not match each other or the model's input.
    """
    validate_options(implementation, output_mode, block_size, memory_budget_bytes)
    x1 = common.as_batch(x1, "x1", _CALLER, model)
    if x2 is not None:
        x2 = common.as_batch(x2, "x2", _CALLER, model)
        common.check_same_example_shape(x1, x2, _CALLER)
    common.ensure_built(model, x1)
    engine = get_engine(model, x1, implementation, output_mode, jit_compile)
    with common.tf32_disabled():
        return engine(x1, x2, block_size, memory_budget_bytes, devices)
