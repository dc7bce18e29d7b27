#!/usr/bin/env bash
# GPU check of the probe engine: a few minutes on one GPU, results under $OUT.
#
#   OUT=/path/to/results bash scripts/device_check.sh      (from the repository root)
#
# What it runs, each step under its own time limit and all within ~7.5 minutes (a failing
# step is recorded and the next one still runs; the exit status is 1 if any failed):
#   1. the GPU and TF's view of it (float64 matmul and Cholesky on the GPU, TF32 state);
#   2. the engine tests that run on a GPU when there is one (kernels, kernel statistics on
#      the device backend, XLA compilation, Lanczos, sharpness, interruption, memory);
#   3. scripts/benchmark_probes.py (n = 256, 1024, 2048, 4096 and the 10-class digits probe);
#   4. scripts/benchmark_ntk.py with 3 repeats, without the slow n = 1024 general paths.
# TF32 is off for the whole process (NVIDIA_TF32_OVERRIDE=0; the engine also turns it off
# around kernel work): it corrupts the small eigenvalues this check measures.
#
# Python: $PY if set, else .venv/bin/python, else python3. TensorFlow with GPU support must
# import there; if it does not, the script installs the project with tensorflow[and-cuda]
# from PyPI (or from wheels in .whl/, with no network), and stops with status 3 and a
# message when that is impossible (e.g. a machine that reaches no package registry and
# has no TF: TF's wheels are far beyond what can be carried to one). Set NO_INSTALL=1 to
# stop instead of installing.
#
# Files written to $OUT: summary.txt (what ran, status and time of each step), run.log
# (all output), gpu.txt, junit.xml, probes.json, ntk.json.
set -euo pipefail

OUT=${OUT:-$PWD/device_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=1 NVIDIA_TF32_OVERRIDE=0
START=$(date +%s)
DEADLINE=$((START + 450))
FAILED=0
: >"$OUT/summary.txt"

log() { echo "[device_check +$(($(date +%s) - START))s] $*" | tee -a "$OUT/summary.txt"; }

# step NAME CAP_SECONDS COMMAND...: runs COMMAND with a limit of min(CAP, time to deadline).
step() {
  local name=$1 cap=$2
  shift 2
  local left=$((DEADLINE - $(date +%s)))
  local limit=$((cap < left ? cap : left))
  if ((limit < 20)); then
    log "SKIP $name: only ${left}s left before the deadline"
    FAILED=1
    return 0
  fi
  log "RUN  $name (limit ${limit}s): $*"
  local t0 rc=0
  t0=$(date +%s)
  timeout --signal=TERM --kill-after=10 "$limit" "$@" >>"$OUT/run.log" 2>&1 || rc=$?
  log "DONE $name: exit $rc in $(($(date +%s) - t0))s"
  if ((rc != 0)); then FAILED=1; fi
}

if [[ -n "${PY:-}" ]]; then
  :
elif [[ -x .venv/bin/python ]]; then
  PY=.venv/bin/python
else
  PY=python3
fi
log "python: $PY ($("$PY" --version 2>&1))"
nvidia-smi >"$OUT/gpu.txt" 2>&1 || log "nvidia-smi failed (see gpu.txt)"

has_gpu_tf() {
  "$PY" - <<'EOF' >>"$OUT/run.log" 2>&1
import tensorflow as tf
gpus = tf.config.list_physical_devices("GPU")
print("TF", tf.__version__, "GPUs:", gpus)
raise SystemExit(0 if gpus else 1)
EOF
}

if ! has_gpu_tf; then
  if [[ -n "${NO_INSTALL:-}" ]]; then
    log "STOP: TensorFlow with a GPU does not import with $PY and NO_INSTALL is set"
    exit 3
  fi
  log "TensorFlow with a GPU does not import with $PY; installing"
  if [[ "$PY" == python3 ]]; then
    python3 -m venv /tmp/lplr-venv
    PY=/tmp/lplr-venv/bin/python
  fi
  if [[ -d .whl ]]; then
    step install 240 "$PY" -m pip install -q --no-index --find-links .whl -e '.[test]' \
      'tensorflow[and-cuda]==2.21.0'
  else
    step install 240 "$PY" -m pip install -q -e '.[test]' 'tensorflow[and-cuda]==2.21.0'
  fi
  if ! has_gpu_tf; then
    log "STOP: no TensorFlow with a GPU could be installed for $PY (no package registry " \
      "reachable, or no GPU visible to TF); nothing was measured. See run.log."
    exit 3
  fi
fi

step gpu 60 "$PY" - <<'EOF'
import tensorflow as tf
from lplr_tf import ntk
print("TF", tf.__version__, "GPUs:", tf.config.list_logical_devices("GPU"))
print("TF32 enabled (process default):", tf.config.experimental.tensor_float_32_execution_enabled())
a = tf.random.stateless_normal((2048, 2048), seed=[1, 2], dtype=tf.float64)
spd = tf.matmul(a, a, transpose_b=True) / 2048 + tf.eye(2048, dtype=tf.float64)
print("float64 matmul and Cholesky on", spd.device, tf.linalg.cholesky(spd).device)
k = tf.cast(spd, tf.float32)
stats = ntk.kernel_statistics(k, scale=1.0)
print("kernel_statistics backend:", stats.backend, "lambda_min", stats.lambda_min)
assert stats.backend == "device", stats.backend
EOF

step tests 150 "$PY" -m pytest -q -p no:cacheprovider --junitxml="$OUT/junit.xml" \
  tests/test_ntk_statistics.py tests/test_ntk_lanczos.py tests/test_hessian.py \
  tests/test_ntk_empirical.py tests/test_ntk_spectrum.py tests/test_ntk_interrupt.py \
  tests/test_ntk_memory.py tests/test_ntk_linearized.py

step probes 180 "$PY" scripts/benchmark_probes.py --sizes 256 1024 2048 4096 --repeats 3 \
  --old_repeats 1 --output "$OUT/probes.json"

step ntk 90 "$PY" scripts/benchmark_ntk.py --repeats 3 --skip_naive_large \
  --skip_jacobian_large --output "$OUT/ntk.json"

log "finished in $(($(date +%s) - START))s, status $FAILED (0: every step passed)"
exit "$FAILED"
