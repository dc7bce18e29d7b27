"""The probe's memory budget (cgroup-aware) and the dense / matrix-free / refuse decision."""

import keras
import numpy as np
import pytest

from lplr_tf.ntk import (
    MemoryBudgetError,
    choose_probe_path,
    empirical_ntk,
    memory,
    memory_budget,
    probe_memory_bytes,
)

GIB = 1024**3


def fake_root(tmp_path, meminfo_kib=None, v2=None, v1=None):
    """A fake / with /proc/meminfo and cgroup v2 or v1 memory files."""
    if meminfo_kib is not None:
        (tmp_path / "proc").mkdir()
        (tmp_path / "proc/meminfo").write_text(
            f"MemTotal:       99999999 kB\nMemAvailable:   {meminfo_kib} kB\n"
        )
    if v2 is not None:
        (tmp_path / "sys/fs/cgroup").mkdir(parents=True)
        (tmp_path / "sys/fs/cgroup/memory.max").write_text(f"{v2[0]}\n")
        (tmp_path / "sys/fs/cgroup/memory.current").write_text(f"{v2[1]}\n")
    if v1 is not None:
        (tmp_path / "sys/fs/cgroup/memory").mkdir(parents=True)
        (tmp_path / "sys/fs/cgroup/memory/memory.limit_in_bytes").write_text(f"{v1[0]}\n")
        (tmp_path / "sys/fs/cgroup/memory/memory.usage_in_bytes").write_text(f"{v1[1]}\n")
    return tmp_path


@pytest.mark.parametrize(
    "setting, expected",
    [
        ({"meminfo_kib": 8 * 1024**2}, 8 * GIB),
        ({"meminfo_kib": 16 * 1024**2, "v2": (4 * GIB, GIB)}, 3 * GIB),
        ({"meminfo_kib": 2 * 1024**2, "v2": (4 * GIB, GIB)}, 2 * GIB),
        ({"meminfo_kib": 16 * 1024**2, "v2": ("max", GIB)}, 16 * GIB),
        ({"meminfo_kib": 16 * 1024**2, "v1": (2 * GIB, GIB // 2)}, 3 * GIB // 2),
        ({"meminfo_kib": 16 * 1024**2, "v1": (9223372036854771712, GIB)}, 16 * GIB),
        ({"v1": (5 * GIB, 6 * GIB)}, 0),
    ],
)
def test_available_memory_honours_cgroup_limits(tmp_path, setting, expected):
    root = fake_root(tmp_path, **setting)
    assert memory.available_host_bytes(root) == expected
    assert memory_budget(0.5, root=root) == expected // 2


def test_budget_without_readable_files_is_the_fallback(tmp_path):
    assert memory.available_host_bytes(tmp_path) is None
    assert memory_budget(root=tmp_path) == 2 * GIB
    with pytest.raises(ValueError, match="fraction=1.5"):
        memory_budget(1.5)


def small_model(outputs=3):
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(outputs)]
    )


def test_estimate_counts_kernel_kernel0_workspace_and_linearized():
    model = small_model()
    x = np.zeros((50, 4), np.float32)
    plain = probe_memory_bytes(model, x, "full", kernel0=False)
    rows = 150
    assert plain.rows == rows and plain.kernel == 4 * rows**2 and plain.workspace == 8 * rows**2
    assert plain.kernel0 == 0 and plain.linearized == 0
    full = probe_memory_bytes(model, x, "full", kernel0=True, linearized=True)
    assert full.total - plain.total == 4 * rows**2 + 24 * rows**2
    trace = probe_memory_bytes(model, x, "trace")
    assert trace.rows == 50 and trace.kernel == 4 * 50**2
    device = probe_memory_bytes(model, x, "full", kernel0=False, device=True)
    assert device.kernel == 2 * plain.kernel and device.workspace == 3 * plain.workspace


def test_path_is_dense_then_matrix_free_then_refused():
    model = small_model()
    x = np.zeros((50, 4), np.float32)
    estimate = probe_memory_bytes(model, x, "full")
    assert choose_probe_path(model, x, budget=estimate.total).path == "dense"
    plan = choose_probe_path(model, x, budget=estimate.total - 1)
    assert plan.path == "matrix_free" and plan.budget == estimate.total - 1
    assert estimate.matrix_free < estimate.total
    with pytest.raises(MemoryBudgetError, match=r"memory budget of 0\.00 GiB\. Fixes"):
        choose_probe_path(model, x, budget=estimate.matrix_free - 1)
    # Trace mode has no matrix-free path: refused as soon as the dense one does not fit.
    trace = probe_memory_bytes(model, x, "trace")
    with pytest.raises(MemoryBudgetError, match="full mode only"):
        choose_probe_path(model, x, "trace", budget=trace.total - 1)


def test_kernel_larger_than_the_budget_is_refused_before_any_allocation():
    # n = 20,000 with O = 10: the kernel alone is 1.6e11 bytes (149 GiB); a budget of 1e8
    # must refuse at once, naming both numbers, instead of allocating.
    model = small_model(outputs=10)
    x = np.zeros((20_000, 4), np.float32)
    with pytest.raises(MemoryBudgetError, match=r"needs 160000000000 bytes .* 100000000 bytes"):
        empirical_ntk(model, x, memory_budget_bytes=1e8)
    assert isinstance(MemoryBudgetError("x"), ValueError)
