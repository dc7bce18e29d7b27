"""Tests of the figures (plots, comparison_plot, figures, run_title).

The figures are read back: each panel's Line2D data against the metric rows, the labels as
mathtext, the files' bytes per format, the legends' boxes against every drawn segment and
marker (on the recorded demo run and SGD run of tests/data/figures), and the title in words.
"""

import json
import math
import os
import re
import shutil
import struct

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lplr_tf import analysis, comparison_plot, figures, plots, report, run_title

DATA = os.path.join(os.path.dirname(__file__), "data", "figures")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The recorded runs: lplr-train --gin_file=digits_fc_gd.gin (2000 steps at most) and
# --gin_file=digits_resnet_sgd.gin (1000 steps), their metrics.jsonl and run.json.
RECORDED = {"digits_fc_gd": 2000, "digits_resnet_sgd": 1000}


def full_rows(steps=60, every=5):
    rows = []
    for index, step in enumerate(range(0, steps + 1, every)):
        loss = 0.97**step
        rows.append(
            {
                "step": step,
                "loss": loss,
                "grad_norm_sq": 2 * 0.3 * loss,
                "pl_ratio": 0.3 + 0.01 * index,
                "drift": 0.01 * index,
                "relative_drift": 0.001 * index,  # ‖θ₀‖₂ = 10
                "ntk_lambda_min": 0.2 - 0.001 * index,
                "ntk_lambda_max": 3.0 + 0.01 * index,
                "kernel_drift": 0.01 * index,
                "kernel_drift_op": 0.001 * index,
                "sharpness": 3.5 + 0.01 * index,
                "gn_sharpness": 3.0 + 0.01 * index,  # = λ_max(K): one line
                "loss_linearized": loss * 0.98,
            }
        )
    return rows


def summarize(rows, **settings):
    return analysis.summarize(
        rows, learning_rate=0.1, settings=analysis.Settings(tolerance=1e-12, **settings)
    )


def recorded(name):
    """(rows, summary) of a recorded run, summarized as the launcher did."""
    directory = os.path.join(DATA, name)
    with open(os.path.join(directory, "metrics.jsonl"), encoding="utf-8") as stream:
        rows = [json.loads(line) for line in stream]
    with open(os.path.join(directory, "run.json"), encoding="utf-8") as stream:
        facts = json.load(stream)
    summary = analysis.summarize(
        rows, learning_rate=facts["learning_rate"], num_steps=RECORDED[name], run=facts
    )
    return rows, summary


def panel(figure, key):
    (axis,) = [axis for axis in figure.axes if axis.get_label() == key]
    return axis


def line(axis, label_start):
    (found,) = [ln for ln in axis.get_lines() if ln.get_label().startswith(label_start)]
    return found


def data(line_2d):
    return [np.asarray(v, dtype=np.float64) for v in line_2d.get_data()]


def column(rows, key, offset=0.0, positive=False):
    pairs = [(r["step"], r[key] - offset) for r in rows if r.get(key) is not None]
    pairs = [(s, v) for s, v in pairs if v > 0 or not positive]
    return [float(s) for s, _ in pairs], [v for _, v in pairs]


# -- the panels hold the rows ---------------------------------------------------------------


def test_convergence_panels_hold_the_rows():
    rows = full_rows()
    summary = summarize(rows)
    figure = plots.convergence_figure(rows, summary)

    steps, values = data(line(panel(figure, "suboptimality"), "$L_t - L^*$ observed"))
    assert list(steps) == column(rows, "loss")[0]
    assert values == pytest.approx(column(rows, "loss", summary["l_star"])[1], rel=1e-12)
    steps, values = data(line(panel(figure, "suboptimality"), "linearized"))
    assert values == pytest.approx(column(rows, "loss_linearized")[1], rel=1e-12)

    pl = panel(figure, "pl_ratio")
    assert list(data(line(pl, "PL ratio"))[1]) == pytest.approx(column(rows, "pl_ratio")[1])
    edges = [ln for ln in pl.get_lines() if ln.get_label().startswith("_")]
    assert [list(data(e)[1]) for e in edges] == [
        pytest.approx(column(rows, "ntk_lambda_min")[1]),
        pytest.approx(column(rows, "ntk_lambda_max")[1]),
    ]

    spectrum = panel(figure, "spectrum")
    for label, key in [
        (r"$\lambda_{\min}(K_t)$", "ntk_lambda_min"),
        (r"$\lambda_{\max}(K_t)$", "ntk_lambda_max"),
        ("sharpness", "sharpness"),
    ]:
        assert list(data(line(spectrum, label))[1]) == pytest.approx(column(rows, key)[1])
    # gn_sharpness equals λ_max(K) in these rows: one line, and the legend says so.
    assert "Gauss–Newton" in line(spectrum, r"$\lambda_{\max}(K_t)$").get_label()
    assert not [ln for ln in spectrum.get_lines() if ln.get_label().startswith("Gauss")]
    two_over_eta = line(spectrum, r"$2/\eta$")
    assert list(data(two_over_eta)[1]) == [2 / 0.1, 2 / 0.1]

    drift = panel(figure, "parameter_drift")
    assert list(data(drift.get_lines()[0])[1]) == pytest.approx(column(rows, "drift")[1])
    kernel = panel(figure, "kernel_drift")
    steps, values = data(line(kernel, r"$\|K_t - K_0\|_F"))
    assert values == pytest.approx(column(rows, "kernel_drift", positive=True)[1])
    assert steps[0] == 5.0 and kernel.get_yscale() == "log"  # 0.01 … 0.12 vs 0.5: no zero
    assert list(data(line(kernel, "local-regime bound"))[1]) == [0.5, 0.5]


def test_a_kernel_drift_near_its_bound_is_on_a_linear_scale_from_zero():
    rows = full_rows()
    for index, row in enumerate(rows):
        row["kernel_drift"] = 0.0 if index == 0 else 0.2 + 0.01 * index  # within 10× of 0.5
    kernel = panel(plots.convergence_figure(rows, summarize(rows)), "kernel_drift")
    assert kernel.get_yscale() == "linear" and kernel.get_ylim()[0] == 0.0
    steps, values = data(line(kernel, r"$\|K_t - K_0\|_F"))
    assert (list(steps), list(values)) == column(rows, "kernel_drift")


def test_the_relative_drift_axis_is_the_drift_over_the_initial_norm():
    rows = full_rows()
    figure = plots.convergence_figure(rows, summarize(rows))
    drift = panel(figure, "parameter_drift")
    (right,) = drift.child_axes  # the secondary axis: ‖θ_t − θ₀‖₂ / ‖θ₀‖₂, ‖θ₀‖₂ = 10
    figure.draw_without_rendering()
    low, high = drift.get_ylim()
    assert right.get_ylim() == pytest.approx((low / 10.0, high / 10.0))


def test_fit_and_bound_curves_follow_the_summary():
    rows = full_rows()
    summary = summarize(rows)
    loss_axis = panel(plots.convergence_figure(rows, summary), "suboptimality")
    steps, values = data(line(loss_axis, "fit"))
    start, end = summary["fit"]["window"]
    assert (steps[0], steps[-1]) == (start, end)
    assert values[-1] / values[0] == pytest.approx(summary["fit"]["rate"] ** (end - start))
    steps, values = data(line(loss_axis, "bound"))
    rate = summary["bound"]["rate_bound"]
    expected = (summary["initial_loss"] - summary["l_star"]) * rate ** (steps - steps[0])
    assert values == pytest.approx(expected, rel=1e-12)


def test_a_gauss_newton_curve_apart_from_lambda_max_is_drawn_in_its_own_style():
    rows = full_rows()
    for row in rows:
        row["gn_sharpness"] = 2.0 * row["ntk_lambda_max"]
    spectrum = panel(plots.convergence_figure(rows, summarize(rows)), "spectrum")
    gauss_newton = line(spectrum, "Gauss–Newton")
    high = line(spectrum, r"$\lambda_{\max}(K_t)$")
    assert "Gauss–Newton" not in high.get_label()
    assert list(data(gauss_newton)[1]) == pytest.approx(column(rows, "gn_sharpness")[1])
    styles = [(ln.get_linestyle(), ln.get_marker()) for ln in spectrum.get_lines()]
    assert len(set(styles)) == len(styles)  # no two curves look alike


def test_lines_that_overlap_stay_apart_by_style_and_markers():
    rows = full_rows()
    for row in rows:
        row["sharpness"] = row["ntk_lambda_max"]  # β = λ_max exactly: the lines coincide
    spectrum = panel(plots.convergence_figure(rows, summarize(rows)), "spectrum")
    high, sharp = line(spectrum, r"$\lambda_{\max}(K_t)$"), line(spectrum, "sharpness")
    assert high.get_linestyle() != sharp.get_linestyle()
    assert high.get_marker() != sharp.get_marker()
    # Markers interleaved: each curve shows its markers where the other shows none.
    count = len(high.get_xdata())
    marked = [
        set(range(count)[ln.get_markevery()[0] :: ln.get_markevery()[1]]) for ln in (high, sharp)
    ]
    assert marked[0] and marked[1] and not marked[0] & marked[1]


@pytest.mark.parametrize("keys", [("step", "loss"), ("step", "loss", "drift")])
def test_panels_without_their_metrics_say_not_measured(keys):
    rows = [{k: row[k] for k in keys} for row in full_rows()]
    figure = plots.convergence_figure(rows, summarize(rows))
    for key in ("pl_ratio", "spectrum", "kernel_drift"):
        axis = panel(figure, key)
        assert not axis.get_lines()
        assert [t.get_text() for t in axis.texts][0].endswith(": not measured")
    assert bool(panel(figure, "parameter_drift").get_lines()) == ("drift" in keys)


def test_a_diverged_run_is_drawn_from_its_finite_losses():
    rows = full_rows()
    rows[5]["loss"] = float("nan")
    rows[6]["loss"] = None
    summary = analysis.summarize(rows, learning_rate=0.1)
    figure = plots.convergence_figure(rows, summary)
    steps, _ = data(line(panel(figure, "suboptimality"), "$L_t - L^*$ observed"))
    assert 25.0 not in steps and 30.0 not in steps and len(steps) == len(rows) - 2


def test_local_rate_panel_draws_the_analysis_numbers_and_tau():
    tau = 300
    rows = [
        {
            "step": s,
            "loss": (1.0 + s) ** -1.0 if s <= tau else (1.0 + tau) ** -1.0 * 0.99 ** (s - tau),
        }
        for s in range(0, 1001, 10)
    ]
    rows[50]["loss"] *= 3.0  # one rise: drawn as a marker, not on the log axis
    summary = analysis.summarize(
        rows, learning_rate=0.1, settings=analysis.Settings(tolerance=1e-30)
    )
    axis = panel(plots.convergence_figure(rows, summary), "local_rate")
    rates = analysis.local_rates(rows, summary)
    falling = [(s, r) for s, r in rates if r < 1]
    steps, values = data(line(axis, r"$1 - \rho_t$"))
    assert list(steps) == [s for s, _ in falling]
    assert list(values) == pytest.approx([1 - r for _, r in falling])
    assert list(line(axis, r"$\rho_t \geq 1$").get_xdata()) == [500]
    tau_line = line(axis, r"$\tau$ = ")
    assert list(tau_line.get_xdata()) == [summary["phases"]["transition_step"]] * 2


# -- labels and title -----------------------------------------------------------------------


def figure_texts(figure):
    texts = [figure.get_suptitle()]
    for axis in figure.axes:
        texts += [axis.get_title(), axis.get_xlabel(), axis.get_ylabel()]
        legend = axis.get_legend()
        if legend is not None:
            texts += [t.get_text() for t in legend.get_texts()]
    return [t for t in texts if t]


def test_labels_are_mathtext_and_no_plain_subscripts_remain():
    rows = full_rows()
    figure = plots.convergence_figure(rows, summarize(rows))
    ylabels = {axis.get_label(): axis.get_ylabel() for axis in figure.axes}
    assert ylabels["suboptimality"] == r"$L_t - L^*$"
    assert ylabels["pl_ratio"] == r"$q_t = \|\nabla L_t\|^2 / (2(L_t - L^*))$"
    assert ylabels["parameter_drift"] == r"$\|\theta_t - \theta_0\|_2$"
    assert ylabels["kernel_drift"] == r"$\|K_t - K_0\|_F / \|K_0\|_F$"
    legend_texts = [t.get_text() for t in panel(figure, "spectrum").get_legend().get_texts()]
    assert r"$\lambda_{\min}(K_t)$" in legend_texts
    for text in figure_texts(figure):
        assert text.count("$") % 2 == 0, text
        outside_math = re.sub(r"\$[^$]*\$", "", text)
        # `L^lin`, `K_0‖_F`, `λ_min`: a subscript or superscript typed as plain text
        assert "_" not in outside_math and "^" not in outside_math, text
        assert not re.search("[λρθβητμ‖]", outside_math), text


RECORDED_TITLES = {
    "digits_fc_gd": "Digits 0 vs 1, FC 1×1024 (NTK param.), full-batch GD, $\\eta$ = 2.5\n"
    "converged at step 860 ($L^*$ = 0, tolerance $10^{-6}$)",
    "digits_resnet_sgd": "Digits 0 vs 1, ResNet 32–64, 1 block/stage, BN (standard param.), "
    "SGD, batch 32, $\\eta$ = 0.01\nran all 1000 steps ($L^*$ = 0, tolerance $10^{-6}$)",
}


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_title_is_the_run_in_words(name):
    rows, summary = recorded(name)
    assert plots.convergence_figure(rows, summary)._suptitle.get_text() == RECORDED_TITLES[name]


def test_title_pieces():
    assert run_title.dataset_title("mnist(0 vs 1, bundled)") == "MNIST 0 vs 1, bundled"
    assert run_title.dataset_title("teacher_student(d=8, width=4, out=1)") == (
        "Teacher–student (d=8, width=4, out=1)"
    )
    assert run_title.dataset_title("my data") == "my data"
    assert run_title.model_title("fc_standard_d3_w512") == "FC 3×512 (standard param.)"
    assert run_title.model_title("resnet_ntk_w16-32-64_b2") == (
        "ResNet 16–32–64, 2 blocks/stage (NTK param.)"
    )
    assert run_title.model_title("my_cnn_logits") == "my_cnn_logits"
    calibration = {"learning_rate_times_sharpness": 1.8, "sharpness0": 0.6}
    assert run_title.step_size_title(3.0, calibration) == r"$\eta = 1.8/\beta_0$ = 3"
    assert run_title.power_of_ten(2.5e-7) == r"$2.5 \times 10^{-7}$"
    assert run_title.power_of_ten(0.5) == "0.5"
    # No run facts (a summary of the callback or of old runs): η from the settings alone.
    rows = full_rows()
    assert run_title.run_title(summarize(rows)) == r"$\eta$ = 0.1"


# -- legends cover no data ------------------------------------------------------------------


def covered_points(figure, box, samples=40):
    """Display points of drawn segments and markers inside `box`, found by sampling."""
    found = []
    for axis in figure.axes:
        for ln in axis.get_lines():
            x, y = (np.asarray(v, dtype=np.float64).ravel() for v in ln.get_data())
            x, y = np.broadcast_arrays(x, y)
            with np.errstate(all="ignore"):
                points = ln.get_transform().transform(np.column_stack([x, y]))
            points = points[np.all(np.isfinite(points), axis=1)]
            if ln.get_linestyle() not in ("None", "") and len(points) > 1:
                fractions = np.linspace(0.0, 1.0, samples)[:, None, None]
                points = (points[:-1] + fractions * (points[1:] - points[:-1])).reshape(-1, 2)
            inside = (
                (points[:, 0] > box.x0 + 1)
                & (points[:, 0] < box.x1 - 1)
                & (points[:, 1] > box.y0 + 1)
                & (points[:, 1] < box.y1 - 1)
            )
            found += [(axis.get_label(), ln.get_label())] * int(inside.sum())
    return found


def legends(figure):
    found = [axis.get_legend() for axis in figure.axes if axis.get_legend() is not None]
    return found + list(figure.legends)


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_legends_cover_no_data_of_the_recorded_runs(name):
    rows, summary = recorded(name)
    figure = plots.convergence_figure(rows, summary)
    figure.draw_without_rendering()
    renderer = figure.canvas.get_renderer()
    placed = legends(figure)
    assert len(placed) == 5  # (a), (b), (c), (d) kernel drift, (e)
    for legend in placed:
        assert covered_points(figure, legend.get_window_extent(renderer)) == []


def test_the_overlap_check_sees_a_legend_on_a_line():
    figure = Figure()
    FigureCanvasAgg(figure)
    axis = figure.add_subplot()
    axis.plot([0, 1], [0, 1], label="diagonal")
    axis.legend(loc="center")
    figure.draw_without_rendering()
    box = axis.get_legend().get_window_extent(figure.canvas.get_renderer())
    assert covered_points(figure, box)
    assert figures.covers_data(box, figure)
    figures.place_legends(figure)
    box = axis.get_legend().get_window_extent(figure.canvas.get_renderer())
    assert not covered_points(figure, box)


def test_a_legend_with_no_room_inside_goes_outside_its_axes():
    figure = Figure(figsize=(3, 2))
    FigureCanvasAgg(figure)
    axis = figure.add_subplot()
    x = np.linspace(0, 1, 200)
    for phase in range(8):  # lines everywhere: no clear place inside
        axis.plot(x, np.sin(20 * x + phase), label=f"curve {phase}")
    axis.legend(loc="center")
    figures.place_legends(figure)
    renderer = figure.canvas.get_renderer()
    box = axis.get_legend().get_window_extent(renderer)
    assert box.x0 >= axis.get_window_extent(renderer).x1
    assert not covered_points(figure, box)


# -- formats, dpi, saving -------------------------------------------------------------------


def png_size(path):
    with open(path, "rb") as stream:
        header = stream.read(24)
    assert header[:8] == PNG_SIGNATURE
    return struct.unpack(">II", header[16:24])


def test_the_chosen_formats_and_dpi_are_written(tmp_path):
    rows = [{"step": r["step"], "loss": r["loss"]} for r in full_rows()]  # quick to draw
    summary = summarize(rows)
    stem = tmp_path / "plots" / "convergence"
    settings = figures.FigureSettings(formats=("pdf", "svg", "png"), dpi=40)
    paths = plots.plot_convergence(rows, summary, stem, settings)
    assert paths == [f"{stem}.pdf", f"{stem}.svg", f"{stem}.png"]
    with open(paths[0], "rb") as stream:
        assert stream.read(5) == b"%PDF-"
    with open(paths[1], encoding="utf-8") as stream:
        assert "<svg" in stream.read()
    assert png_size(paths[2]) == (round(7.2 * 40), round(8.4 * 40))  # figsize × dpi
    plots.plot_convergence(rows, summary, stem, figures.FigureSettings(dpi=75))
    assert png_size(paths[2]) == (round(7.2 * 75), round(8.4 * 75))
    assert sorted(os.listdir(tmp_path / "plots")) == [
        "convergence.pdf",
        "convergence.png",
        "convergence.svg",
    ]  # no partial file left


def test_a_path_with_an_extension_is_refused_not_doubled(tmp_path):
    figure = comparison_plot.comparison_figure([("run", full_rows(), summarize(full_rows()))])
    with pytest.raises(ValueError, match="stem=.*convergence.png' ends with a figure format"):
        figures.save_figure(figure, str(tmp_path / "convergence.png"))
    assert os.listdir(tmp_path) == []


def test_a_redrawn_pdf_is_the_same_file(tmp_path):
    rows = [{"step": r["step"], "loss": r["loss"]} for r in full_rows()]
    summary = summarize(rows)
    settings = figures.FigureSettings(formats="pdf")
    (first,) = plots.plot_convergence(rows, summary, tmp_path / "a", settings)
    (second,) = plots.plot_convergence(rows, summary, tmp_path / "b", settings)
    with open(first, "rb") as a, open(second, "rb") as b:
        assert a.read() == b.read()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(formats=("jpg",)), "formats = \\('jpg',\\); expected one or more of"),
        (dict(formats=("pdf", "PDF")), "without repeats"),
        (dict(formats=()), "formats = \\(\\)"),
        (dict(dpi=0), "dpi = 0; expected an integer >= 10"),
        (dict(dpi=72.5), "dpi = 72.5"),
    ],
)
def test_bad_figure_settings_are_named(arguments, message):
    with pytest.raises(ValueError, match=message):
        figures.FigureSettings(**arguments)


def test_figure_settings_must_be_an_instance():
    assert figures.FigureSettings(formats="PDF").formats == ("pdf",)
    with pytest.raises(ValueError, match="@figures.FigureSettings\\(\\)"):
        figures.figure_settings(figures.FigureSettings, "experiment.run.figure_settings")


# -- the comparison -------------------------------------------------------------------------


def test_comparison_panels_hold_each_runs_rows_and_one_legend_names_them():
    first = full_rows()
    second = [dict(r, loss=r["loss"] ** 0.5, drift=2 * r["drift"]) for r in full_rows()]
    runs = [(n, rows, summarize(rows)) for n, rows in [("w1024", first), ("w64", second)]]
    figure = comparison_plot.comparison_figure(runs)
    for key, row_key in [
        ("suboptimality", "loss"),
        ("kernel_drift", "kernel_drift"),
        ("parameter_drift", "drift"),
        ("relative_drift", "relative_drift"),
    ]:
        axis = panel(figure, key)
        for (label, rows, summary), drawn in zip(runs, axis.get_lines()):
            assert drawn.get_label() == f"{label} ({summary['status'].replace('_', ' ')})"
            assert list(data(drawn)[1]) == pytest.approx(column(rows, row_key)[1])
    (legend,) = figure.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        f"{label} ({summary['status'].replace('_', ' ')})" for label, _, summary in runs
    ]
    figure.draw_without_rendering()
    box = legend.get_window_extent(figure.canvas.get_renderer())
    assert covered_points(figure, box) == []
    with pytest.raises(ValueError, match="runs=\\[\\]"):
        comparison_plot.comparison_figure([])


def test_report_draws_the_formats_its_flags_name(tmp_path):
    runs = []
    for name in ("w1", "w2"):
        shutil.copytree(os.path.join(DATA, "digits_fc_gd"), tmp_path / name)
        runs.append(str(tmp_path / name))
    output_dir = tmp_path / "figures"
    arguments = [*runs, "--learning_rate=2.5", "--formats=svg", f"--output_dir={output_dir}"]
    with open(os.devnull, "w") as quiet:
        assert report.main(arguments, stdout=quiet) == 0
    for directory, stem in [(tmp_path / "w1" / "plots", "convergence"), (output_dir, "comparison")]:
        assert os.listdir(directory) == [f"{stem}.svg"]
        assert "<svg" in (directory / f"{stem}.svg").read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="--formats=jpg --dpi=200; expected formats among"):
        report.main([runs[0], "--learning_rate=2.5", "--formats=jpg"])


def test_launcher_writes_the_formats_gin_names(tmp_path):
    from lplr_tf import train

    workdir = str(tmp_path / "run")
    bindings = ["figures.FigureSettings.formats = ('pdf', 'svg')"]
    summary = train.launch(["digits_fc_gd.gin", "smoke.gin"], bindings, workdir)
    assert sorted(os.listdir(os.path.join(workdir, "plots"))) == [
        "convergence.pdf",
        "convergence.svg",
    ]
    with open(os.path.join(workdir, "run.json"), encoding="utf-8") as stream:
        facts = json.load(stream)
    assert (facts["model"], facts["batch_size"]) == ("fc_ntk_d1_w16", None)
    assert summary["run"]["model"] == "fc_ntk_d1_w16"
    assert math.isclose(summary["settings"]["learning_rate"], 2.5)
    # A finished run lacking one of its chosen formats is finished again, identically.
    os.remove(os.path.join(workdir, "plots", "convergence.svg"))
    assert train.launch(["digits_fc_gd.gin", "smoke.gin"], bindings, workdir) == summary
    with open(os.path.join(workdir, "plots", "convergence.svg"), encoding="utf-8") as stream:
        assert "<svg" in stream.read()
