"""scripts/example_own_model.py runs end to end in smoke mode and writes its run directory."""

import json
import os
import subprocess
import sys

import numpy as np

SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, "scripts", "example_own_model.py")


def test_example_own_model_smoke(tmp_path):
    output_dir = tmp_path / "own_model"
    completed = subprocess.run(
        [sys.executable, SCRIPT, "--smoke", "--output_dir", str(output_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "verdict: " in completed.stdout
    assert "η on L = 0.016 (optimizer learning rate 0.008 × 2" in completed.stdout
    assert "(measured at step 12) after epoch 12" in completed.stdout
    plot = output_dir / "plots" / "convergence.png"
    assert plot.is_file() and plot.stat().st_size > 10_000
    with open(output_dir / "summary.json", encoding="utf-8") as file:
        summary = json.load(file)
    assert summary["caveat"] is None and summary["steps"] == 12
    with open(output_dir / "metrics.jsonl", encoding="utf-8") as file:
        steps = [json.loads(line)["step"] for line in file]
    assert steps == [0, 4, 8, 12]
    with np.load(output_dir / "reference.npz", allow_pickle=False) as reference:
        assert sorted(reference.files) == ["kernel0", "residual0", "theta0"]
        assert reference["kernel0"].shape == (32, 32)  # n = 32 examples, one output
    assert not os.path.exists(output_dir / "backup")  # BackupAndRestore cleans up at the end
    assert os.listdir(output_dir / "tb")
