"""Step-size stability from the logged sharpness: η·β against 1 and 2, and the edge of stability.

Pure functions of the metric rows. β_t is the sharpness λ_max(∇²L) measured at probes (a
Lanczos lower estimate); 2/η is the stability threshold of GD on a quadratic.

* Progressive sharpening: β rises by at least `SHARPENING_RISE` (relative) above its running
  minimum and reaches `SHARPENING_APPROACH`·2/η. Reported with the step where the rise
  started (the running minimum) and the first step where β reached that level.
* Loss spike: a logged loss above `SPIKE_FACTOR` times the lowest loss logged before it.
  The spike lasts while the loss stays above that level; its peak is the largest loss in it;
  it has returned when a later logged loss is back at or below the level.
* Catapult: a spike that returned, followed by a sharpness drop: the first probe at or after
  the return step (else the last probe after the spike started) measures at most
  (1 − `SHARPNESS_DROP`) times the last probe before the spike, or it is below 2/η while
  that probe was at or above it (Lewkowycz et al. 2020: the sharpness ends below 2/η). A
  spike that never returned is a divergence, not a catapult.
"""

import itertools

from lplr_tf.bounds import series, step_size_ok

SHARPENING_RISE = 0.2
SHARPENING_APPROACH = 0.9
SPIKE_FACTOR = 2.0
SHARPNESS_DROP = 0.1
SHARPNESS_NOTE = "measured at probes; Lanczos gives a lower estimate of λ_max"


def progressive_sharpening(sharpness, learning_rate):
    """Detects β rising toward 2/η (module docstring).

    Args:
      sharpness: [(step, β_t)] at the probes, sorted by step.
      learning_rate: η > 0.

    Returns:
      Dict detected (None without probes), start_step, reached_step, sharpness_start,
      sharpness_reached, threshold (2/η).
    """
    threshold = 2.0 / learning_rate
    result = {
        "detected": None if not sharpness else False,
        "start_step": None,
        "reached_step": None,
        "sharpness_start": None,
        "sharpness_reached": None,
        "threshold": threshold,
    }
    lowest_step, lowest = None, None
    for step, beta in sharpness:
        if lowest is not None and beta >= SHARPENING_APPROACH * threshold:
            if beta >= (1.0 + SHARPENING_RISE) * lowest:
                result.update(
                    detected=True,
                    start_step=lowest_step,
                    reached_step=step,
                    sharpness_start=lowest,
                    sharpness_reached=beta,
                )
                return result
        if lowest is None or beta < lowest:
            lowest_step, lowest = step, beta
    return result


def _spikes(losses):
    """Loss spikes as dicts spike_step, peak_step, peak_loss, level, return_step (or None)."""
    lowest_before = list(itertools.accumulate((loss for _, loss in losses), min))
    spikes, index = [], 1
    while index < len(losses):
        level = SPIKE_FACTOR * lowest_before[index - 1]
        if losses[index][1] <= level:
            index += 1
            continue
        end = index
        while end < len(losses) and losses[end][1] > level:
            end += 1
        peak_step, peak_loss = max(losses[index:end], key=lambda pair: pair[1])
        spikes.append(
            {
                "spike_step": losses[index][0],
                "peak_step": peak_step,
                "peak_loss": peak_loss,
                "level": level,
                "return_step": losses[end][0] if end < len(losses) else None,
            }
        )
        index = end + 1
    return spikes


def loss_spikes(losses, sharpness, learning_rate):
    """Loss spikes, each marked a catapult or not by the sharpness around it.

    Args:
      losses: [(step, L_t)] finite logged losses, sorted by step.
      sharpness: [(step, β_t)] at the probes, sorted by step.
      learning_rate: η > 0 (the stability threshold is 2/η).

    Returns:
      A list of dicts spike_step, peak_step, peak_loss, level, return_step, sharpness_before,
      sharpness_after, sharpness_after_step, catapult (True/False; None when no probe
      before or after the spike could tell).
    """
    result = []
    for spike in _spikes(losses):
        before = [(s, b) for s, b in sharpness if s < spike["spike_step"]]
        returned = spike["return_step"]
        after = [] if returned is None else [(s, b) for s, b in sharpness if s >= returned]
        if returned is not None and not after:
            after = [(s, b) for s, b in sharpness if s > spike["spike_step"]][-1:]
        spike["sharpness_before"] = before[-1][1] if before else None
        spike["sharpness_after_step"] = after[0][0] if after else None
        spike["sharpness_after"] = after[0][1] if after else None
        catapult = None
        if returned is None:
            catapult = False
        elif before and after:
            high, low = before[-1][1], after[0][1]
            crossed = high >= 2.0 / learning_rate > low
            catapult = low <= (1.0 - SHARPNESS_DROP) * high or crossed
        spike["catapult"] = catapult
        result.append(spike)
    return result


def sharpness_section(rows, learning_rate, end_step=None):
    """The summary's `sharpness` section.

    Args:
      rows: Metric rows sorted by step.
      learning_rate: η > 0.
      end_step: Last step to consider (the divergence step of a diverged run), or None.

    Returns:
      Dict max, eta_times_max, step_size_ok (η·β ≤ 1 at every probe, with the slack of
      `bounds.step_size_ok`), edge_of_stability (η·β ≥ 2 at some probe), gauss_newton_max,
      progressive_sharpening, loss_spikes, catapult_steps, kind, note.
    """
    sharpness = series(rows, "sharpness")
    losses = series(rows, "loss")
    if end_step is not None:
        losses = [(s, v) for s, v in losses if s <= end_step]
    values = [v for _, v in sharpness]
    gauss_newton = [v for _, v in series(rows, "gn_sharpness")]
    top = max(values) if values else None
    spikes = loss_spikes(losses, sharpness, learning_rate)
    return {
        "max": top,
        "eta_times_max": None if top is None else learning_rate * top,
        "step_size_ok": (
            None if not values else all(step_size_ok(learning_rate, v) for v in values)
        ),
        "edge_of_stability": None if not values else any(learning_rate * v >= 2.0 for v in values),
        "gauss_newton_max": max(gauss_newton) if gauss_newton else None,
        "progressive_sharpening": progressive_sharpening(sharpness, learning_rate),
        "loss_spikes": spikes,
        "catapult_steps": [s["spike_step"] for s in spikes if s["catapult"]],
        "kind": "measured",
        "note": SHARPNESS_NOTE,
    }
