"""A run's figure title in words, from the facts its summary records.

`run_title(summary)` turns `summary["run"]` (the facts the launcher records in run.json:
dataset, model, protocol, batch size, η) into a title a reader understands, e.g.
"Digits 0 vs 1, FC 1×1024 (NTK param.), full-batch GD, $\\eta$ = 2.5" (mathtext). Names of
the package's own builders are spelled out (`fc_ntk_d1_w1024` → "FC 1×1024 (NTK param.)");
any other name (a user's model) is shown as it is. A fact that was not recorded is left out.
"""

import math
import re

from lplr_tf.values import finite

DATASETS = {
    "digits": "Digits",
    "mnist": "MNIST",
    "cifar10": "CIFAR-10",
    "teacher_student": "Teacher–student",
}
PARAMETERIZATIONS = {"ntk": "NTK param.", "standard": "standard param."}
PROTOCOLS = {"gd": "full-batch GD", "sgd": "SGD"}


def dataset_title(name):
    """ "digits(0 vs 1)" → "Digits 0 vs 1"; "teacher_student(d=8, ...)" keeps its brackets."""
    match = re.fullmatch(r"(\w+)\((.*)\)", name)
    if match is None:
        return name
    kind, details = match.groups()
    shown = DATASETS.get(kind, kind)
    if not details:
        return shown
    return f"{shown} ({details})" if "=" in details else f"{shown} {details}"


def model_title(name):
    """ "fc_ntk_d1_w1024" → "FC 1×1024 (NTK param.)"; a name of no builder of ours as it is."""
    fully_connected = re.fullmatch(r"fc_(\w+?)_d(\d+)_w(\d+)", name)
    if fully_connected:
        parameterization, depth, width = fully_connected.groups()
        return f"FC {depth}×{width} ({PARAMETERIZATIONS.get(parameterization, parameterization)})"
    resnet = re.fullmatch(r"resnet_(\w+?)_w([\d-]+)_b(\d+)(_bn)?", name)
    if resnet:
        parameterization, widths, blocks, batch_norm = resnet.groups()
        blocks_text = f"{blocks} block{'' if blocks == '1' else 's'}/stage"
        return (
            f"ResNet {widths.replace('-', '–')}, {blocks_text}{', BN' if batch_norm else ''} "
            f"({PARAMETERIZATIONS.get(parameterization, parameterization)})"
        )
    return name


def protocol_title(protocol, batch_size=None):
    """ "gd" → "full-batch GD"; "sgd" with batch 32 → "SGD, batch 32"."""
    shown = PROTOCOLS.get(protocol, protocol)
    if protocol == "sgd" and isinstance(batch_size, int):
        shown += f", batch {batch_size}"
    return shown


def step_size_title(learning_rate, calibration=None):
    """ "$\\eta$ = 2.5", or "$\\eta = 1/\\beta_0$ = 3.05" when η was set from the sharpness."""
    if finite(learning_rate) is None:
        return None
    if isinstance(calibration, dict) and calibration.get("learning_rate_times_sharpness"):
        factor = calibration["learning_rate_times_sharpness"]
        return rf"$\eta = {factor:g}/\beta_0$ = {learning_rate:.3g}"
    return rf"$\eta$ = {learning_rate:.3g}"


def run_title(summary):
    """The title of a run's figure from `summary["run"]` and `summary["settings"]`.

    Args:
      summary: The dict of `analysis.summarize`; its `run` facts may be None or partial
        (a run recorded before a fact existed): what is missing is left out.

    Returns:
      e.g. "Digits 0 vs 1, FC 1×1024 (NTK param.), full-batch GD, $\\eta$ = 2.5".
    """
    facts = summary.get("run") or {}
    parts = []
    if isinstance(facts.get("dataset"), str):
        parts.append(dataset_title(facts["dataset"]))
    if isinstance(facts.get("model"), str):
        parts.append(model_title(facts["model"]))
    if isinstance(facts.get("protocol"), str):
        parts.append(protocol_title(facts["protocol"], facts.get("batch_size")))
    learning_rate = facts.get("learning_rate", summary["settings"].get("learning_rate"))
    step_size = step_size_title(learning_rate, facts.get("learning_rate_calibration"))
    if step_size:
        parts.append(step_size)
    return ", ".join(parts)


def status_line(summary):
    """ "converged at step 860 ($L^*$ = 0, tolerance $10^{-6}$)": how the run ended.

    "ran all 1000 steps" for max_steps (neither converged nor diverged).
    """
    settings = summary["settings"]
    status, step = summary["status"], summary["status_step"]
    if step is not None:
        ended = f"{status} at step {step}"
    elif status == "max_steps":
        ended = f"ran all {summary['steps']} steps"
    else:
        ended = f"{status.replace('_', ' ')} after {summary['steps']} steps"
    return (
        f"{ended} ($L^*$ = {settings['l_star']:g}, tolerance {power_of_ten(settings['tolerance'])})"
    )


def power_of_ten(value):
    """1e-06 → "$10^{-6}$", 2.5e-07 → "$2.5 \\times 10^{-7}$", 0.5 → "0.5" (mathtext)."""
    if value == 0 or not math.isfinite(value) or 1e-3 <= abs(value) < 1e4:
        return f"{value:g}"
    exponent = math.floor(math.log10(abs(value)))
    mantissa = value / 10**exponent
    if math.isclose(mantissa, 1.0, rel_tol=1e-9):
        return rf"$10^{{{exponent}}}$"
    return rf"${mantissa:.3g} \times 10^{{{exponent}}}$"
