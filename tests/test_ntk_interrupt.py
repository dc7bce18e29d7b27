"""should_stop: an abort request returns control within a bounded number of steps."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from lplr_tf.ntk import (
    ProbeInterrupted,
    blocking,
    empirical_ntk,
    get_engine,
    kernel_statistics,
    matrix_free_statistics,
)


class StopAfter:
    """should_stop that says stop at its `limit`-th poll, counting every poll."""

    def __init__(self, limit):
        self.limit, self.polls = limit, 0

    def __call__(self):
        self.polls += 1
        return self.polls >= self.limit


@pytest.fixture(scope="module")
def model_and_x():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(2)]
    )
    x = np.random.default_rng(0).standard_normal((120, 6)).astype(np.float32)
    return model, x


def count_contractions(monkeypatch, engine):
    calls = []
    contract = engine.contract

    def counting(f1, f2):
        calls.append(1)
        return contract(f1, f2)

    monkeypatch.setattr(engine, "contract", counting)
    return calls


def test_abort_during_assembly_stops_at_the_next_block(monkeypatch, model_and_x):
    model, x = model_and_x
    expected = empirical_ntk(model, x).numpy()
    engine = get_engine(model, tf.constant(x), "auto", "full")
    calls = count_contractions(monkeypatch, engine)
    # 12 row blocks of 10 examples: 78 block contractions if nothing stops it.
    stop = StopAfter(6)
    with pytest.raises(ProbeInterrupted, match="kernel assembly") as raised:
        empirical_ntk(model, x, block_size=10, should_stop=stop)
    assert raised.value.stage == "kernel assembly"
    # Polls: before row block 0, then before each block; the 6th poll stops it.
    assert stop.polls == 6 and len(calls) == 4
    # Nothing was left half-built: the next call gives the whole kernel.
    again = empirical_ntk(model, x, block_size=10, should_stop=lambda: False, as_numpy=True)
    np.testing.assert_allclose(again, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    assert len(calls) == 4 + 78


def test_default_blocks_are_capped_in_rows(monkeypatch, model_and_x):
    # Blocks of at most MAX_BLOCK_ROWS kernel rows even when memory would allow one block,
    # so that no single TF call runs long: with a cap of 40 rows (20 examples of O = 2),
    # n = 120 gives 6 row blocks and 21 symmetric block contractions.
    model, x = model_and_x
    expected = empirical_ntk(model, x).numpy()
    monkeypatch.setattr(blocking, "MAX_BLOCK_ROWS", 40)
    engine = get_engine(model, tf.constant(x), "auto", "full")
    calls = count_contractions(monkeypatch, engine)
    kernel = empirical_ntk(model, x, memory_budget_bytes=10**9, as_numpy=True)
    assert len(calls) == 21
    np.testing.assert_allclose(kernel, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_statistics_poll_at_every_step_and_stop_in_the_stage_asked(monkeypatch):
    from lplr_tf.ntk import cholesky, interrupt, statistics_host

    rng = np.random.default_rng(1)
    a = rng.standard_normal((300, 300))
    kernel = a @ a.T / 300 + np.eye(300)
    monkeypatch.setattr(statistics_host, "SINGLE_CALL_ROWS", 0)  # the blocked path,
    monkeypatch.setattr(cholesky, "DEFAULT_BLOCK", 32)  # in 10 panels
    polls = []
    check = interrupt.check
    monkeypatch.setattr(
        interrupt, "check", lambda should_stop, stage: (polls.append(stage), check(None, stage))
    )
    stats = kernel_statistics(kernel, 1.01 * kernel, scale=1.0)
    monkeypatch.setattr(interrupt, "check", check)
    order = [s for k, s in enumerate(polls) if k == 0 or polls[k - 1] != s]
    assert order == ["kernel drift", "kernel statistics", "lambda_max", "cholesky", "lambda_min"]
    # One poll per matrix-vector product, and per Cholesky panel and row chunk of its update.
    assert polls.count("lambda_max") == stats.iterations["lambda_max"]
    assert polls.count("lambda_min") == stats.iterations["lambda_min"]
    assert polls.count("cholesky") == 10 + 9
    for stage in order:
        first = polls.index(stage) + 1
        stop = StopAfter(first)
        with pytest.raises(ProbeInterrupted) as raised:
            kernel_statistics(kernel, 1.01 * kernel, scale=1.0, should_stop=stop)
        assert raised.value.stage == stage and stop.polls == first


def test_abort_during_matrix_free_statistics(model_and_x):
    model, x = model_and_x
    stop = StopAfter(3)
    with pytest.raises(ProbeInterrupted, match="matrix-free"):
        matrix_free_statistics(model, x, scale=1 / 120, should_stop=stop)
    assert stop.polls == 3
