"""How every figure of lplr_tf looks and is written: one style, one saver, legends off the data.

The convergence figure (`plots`), the comparison (`comparison_plot`) and the sweep figure
(`sweep_report`) are built inside `styled()` (the rcParams of `STYLE`: serif text, STIX
mathtext, small print sizes, a colour-blind-safe palette, TrueType fonts in PDF), laid out by
matplotlib's constrained layout, passed through `place_legends` (no legend covers a drawn
line or marker) and written by `save_figure` in the formats and resolution of a
`FigureSettings` (gin: `figures.FigureSettings.formats = ('pdf', 'png')`, `.dpi = 300`).

Figures are `matplotlib.figure.Figure` objects on the Agg canvas: no pyplot, no global
backend; the style is applied only while a figure is built and saved. `series`, `positive`
and `not_measured` are how every panel reads metric rows and says what is missing.
"""

import contextlib
import dataclasses
import os

import matplotlib
import matplotlib.ticker
import numpy as np
from cycler import cycler
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.path import Path

from lplr_tf import validation
from lplr_tf.rundir import FIGURE_FORMATS as FORMATS
from lplr_tf.values import finite

# Okabe & Ito's palette: distinguishable with the common colour-vision deficiencies.
COLORS = {
    "blue": "#0072B2",
    "orange": "#E69F00",
    "green": "#009E73",
    "vermillion": "#D55E00",
    "purple": "#CC79A7",
    "sky": "#56B4E9",
    "yellow": "#F0E442",
    "black": "#000000",
    "gray": "#7F7F7F",
}

STYLE = {
    "font.family": ["STIXGeneral", "DejaVu Sans"],  # DejaVu for glyphs STIX lacks (θ₀)
    "mathtext.fontset": "stix",
    "font.size": 8,
    "axes.titlesize": 8.5,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 6.5,
    "legend.framealpha": 0.92,
    "legend.edgecolor": "0.75",
    "legend.borderpad": 0.35,
    "legend.labelspacing": 0.3,
    "legend.handlelength": 2.4,  # long enough to tell dashed, dotted and dash-dot apart
    "figure.titlesize": 9.5,
    "lines.linewidth": 1.2,
    "lines.markersize": 3.0,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.4,
    "axes.linewidth": 0.6,
    "axes.prop_cycle": cycler(color=[COLORS[c] for c in ("blue", "orange", "green", "purple")]),
    "pdf.fonttype": 42,  # TrueType, not Type 3: what journals ask for
    "ps.fonttype": 42,
    "svg.fonttype": "path",  # an SVG that looks the same without the fonts installed
}

# The largest share of an axes' height that a legend may take at its top (`place_legends`).
HEADROOM = 0.45

# Where a legend may go inside its axes, tried in this order.
LEGEND_LOCATIONS = (
    "upper right",
    "upper left",
    "lower left",
    "lower right",
    "center right",
    "center left",
    "upper center",
    "lower center",
)


@dataclasses.dataclass(frozen=True)
class FigureSettings:
    """The files a figure is written to (gin: `figures.FigureSettings.formats = ('pdf',)`).

    Attributes:
      formats: One or more of "png", "pdf", "svg"; a figure `plots/convergence` is written
        as plots/convergence.<format> for each. A single string means one format.
      dpi: Dots per inch of PNG files (and of anything rasterized inside a PDF or SVG).
    """

    formats: tuple = ("png",)
    dpi: int = 200

    def __post_init__(self):
        name = "figures.FigureSettings"
        formats = (self.formats,) if isinstance(self.formats, str) else self.formats
        if (
            not isinstance(formats, (tuple, list))
            or not formats
            or not all(isinstance(f, str) for f in formats)
            or any(f.lower().lstrip(".") not in FORMATS for f in formats)
            or len({f.lower().lstrip(".") for f in formats}) != len(formats)
        ):
            raise ValueError(
                f"{name}.formats = {self.formats!r}; expected one or more of {FORMATS} without "
                f"repeats. Set e.g. {name}.formats = ('pdf', 'png')."
            )
        object.__setattr__(self, "formats", tuple(f.lower().lstrip(".") for f in formats))
        object.__setattr__(self, "dpi", validation.integer(f"{name}.dpi", self.dpi, 10))


def new_figure(width, height):
    """An empty Figure of width × height inches: constrained layout, Agg canvas, `STYLE`.

    Call it inside `styled()` (the style of the artists is read as they are made).
    """
    figure = Figure(figsize=(width, height), layout="constrained")
    figure.get_layout_engine().set(w_pad=0.03, h_pad=0.03)
    FigureCanvasAgg(figure)
    return figure


def figure_settings(value, name):
    """`value` if it is a FigureSettings, the defaults for None; else a ValueError naming it."""
    if value is None:
        return FigureSettings()
    if not isinstance(value, FigureSettings):
        raise ValueError(
            f"{name} = {value!r}; expected a figures.FigureSettings instance. Bind it with "
            f"parentheses: {name} = @figures.FigureSettings()."
        )
    return value


def settings_from_flags(formats, dpi):
    """FigureSettings from command-line flags (`--formats=pdf,png --dpi=300`).

    Raises:
      ValueError: naming the flags, what was expected and an example.
    """
    try:
        return FigureSettings(formats=tuple(formats), dpi=dpi)
    except ValueError:
        raise ValueError(
            f"--formats={','.join(formats)} --dpi={dpi}; expected formats among {FORMATS} "
            "without repeats and a dpi >= 10, e.g. --formats=pdf,png --dpi=300."
        ) from None


def series(rows, key, offset=0.0):
    """Returns (steps, values) float arrays for rows where `key` is a finite number."""
    steps, values = [], []
    for row in rows:
        value = finite(row.get(key))
        if value is not None:
            steps.append(float(row["step"]))
            values.append(value - offset)
    return np.asarray(steps), np.asarray(values)


def positive(steps, values):
    """The points of (steps, values) where the value is > 0 (what a log axis can show)."""
    keep = values > 0
    return steps[keep], values[keep]


def not_measured(axis, what):
    """Says "<what>: not measured" in an empty axes, instead of a blank or an error."""
    axis.text(
        0.5,
        0.5,
        f"{what}: not measured",
        ha="center",
        va="center",
        transform=axis.transAxes,
        color=COLORS["gray"],
    )
    axis.set_xticks([])
    axis.set_yticks([])
    axis.grid(False)


@contextlib.contextmanager
def styled():
    """Applies `STYLE` while a figure is built and saved (rcParams are read at both times)."""
    with matplotlib.rc_context(STYLE):
        yield


def save_figure(figure, stem, settings=None):
    """Writes `figure` as stem.<format> for each format of `settings`; returns the paths.

    Each file is written under a temporary name and renamed, so a file under its final name
    is always whole. PDF and SVG files carry no creation date: a redrawn figure of the same
    data is the same file.

    Args:
      figure: A `matplotlib.figure.Figure`.
      stem: The path without extension, e.g. "runs/demo/plots/convergence"; parent
        directories are created.
      settings: A `FigureSettings` (None: PNG at the default dpi).

    Returns:
      The list of paths written, in the order of `settings.formats`.

    Raises:
      ValueError: `stem` ends with .png, .pdf or .svg (a path, not a stem).
    """
    settings = figure_settings(settings, "save_figure: settings")
    stem = os.fspath(stem)
    if os.path.splitext(stem)[1].lstrip(".").lower() in FORMATS:
        raise ValueError(
            f"save_figure: stem={stem!r} ends with a figure format; expected the path without "
            f"extension (the formats come from FigureSettings.formats). Pass "
            f"{os.path.splitext(stem)[0]!r}."
        )
    directory = os.path.dirname(stem)
    if directory:
        os.makedirs(directory, exist_ok=True)
    if not isinstance(figure.canvas, FigureCanvasAgg):
        FigureCanvasAgg(figure)
    metadata = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}
    written = []
    with styled():
        for extension in settings.formats:
            path = f"{stem}.{extension}"
            partial = f"{stem}.partial.{extension}"
            # No bbox_inches="tight": the constrained layout already fits every artist in
            # the figure, so the file is exactly figsize × dpi and is drawn once.
            figure.savefig(
                partial, format=extension, dpi=settings.dpi, metadata=metadata.get(extension)
            )
            os.replace(partial, path)
            written.append(path)
    return written


def _finite_display_points(transform, x, y):
    """The finite points (x, y) in display coordinates (pixels), shape (m, 2)."""
    x, y = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    with np.errstate(all="ignore"):
        points = transform.transform(np.column_stack([x.ravel(), y.ravel()]))
    return points[np.all(np.isfinite(points), axis=1)]


def _polyline_covers(box, points, linewidth, points_per_pixel):
    pad = 0.5 * linewidth * points_per_pixel
    return len(points) > 1 and Path(points).intersects_bbox(box.padded(pad), filled=False)


def covers_data(box, figure):
    """Whether the display-space Bbox `box` covers a marker or a line segment of `figure`.

    Data are the lines' drawn segments and markers (padded by half the line width and marker
    size) and line collections (error bars); filled bands and text are not data a legend
    must avoid.
    """
    points_per_pixel = figure.dpi / 72.0
    for axis in figure.axes:
        for line in axis.get_lines():
            if not line.get_visible():
                continue
            points = _finite_display_points(line.get_transform(), *line.get_data())
            if line.get_marker() not in (None, "None", "", " "):
                pad = 0.5 * line.get_markersize() * points_per_pixel
                if box.padded(pad).count_contains(points) > 0:
                    return True
            if line.get_linestyle() not in ("None", "", " ") and _polyline_covers(
                box, points, line.get_linewidth(), points_per_pixel
            ):
                return True
        for collection in axis.collections:
            if not isinstance(collection, LineCollection) or not collection.get_visible():
                continue
            width = max(collection.get_linewidths(), default=1.0)
            for segment in collection.get_segments():
                points = _finite_display_points(collection.get_transform(), *np.transpose(segment))
                if _polyline_covers(box, points, width, points_per_pixel):
                    return True
    return False


def _clear(legend, axis, renderer, figure):
    """Whether the legend lies within its axes and covers no data."""
    box = legend.get_window_extent(renderer)
    frame = axis.get_window_extent(renderer).padded(1.0)
    inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 <= box.y1 <= frame.y1
    return inside and not covers_data(box, figure)


class _TicksUpTo(matplotlib.ticker.Locator):
    """The ticks `locator` gives for the data's range, none in the headroom above `top`."""

    def __init__(self, locator, top):
        self.locator, self.top = locator, top

    def set_axis(self, axis):
        super().set_axis(axis)
        self.locator.set_axis(axis)

    def __call__(self):
        low, high = self.axis.get_view_interval()
        return self.tick_values(low, high)

    def tick_values(self, vmin, vmax):
        ticks = self.locator.tick_values(vmin, min(vmax, self.top))
        return [tick for tick in ticks if tick <= self.top]


def _make_headroom(axis, legend, renderer, figure, largest=HEADROOM):
    """Raises the top of the y-range so the data sit below the legend at the top of the axes.

    Returns whether a top location is now clear; the y-range is put back when none is, or
    when the legend would take more than `largest` of the axes' height. The ticks stop at
    the data's range: the headroom is blank.
    """
    limits = axis.get_ylim()
    frame = axis.get_window_extent(renderer)
    scale = axis.yaxis.get_transform()  # log axes get headroom in decades
    low, high = scale.transform(np.asarray(limits, dtype=np.float64))
    for location in ("upper right", "upper left", "upper center"):
        legend.set_loc(location)
        box = legend.get_window_extent(renderer)
        taken = (frame.y1 - box.y0 + 4.0) / frame.height  # the legend, its pad and 4 pixels
        if not 0.0 < taken <= largest:
            continue
        top = scale.inverted().transform(np.array([low + (high - low) / (1.0 - taken)]))[0]
        axis.set_ylim(limits[0], top)
        if _clear(legend, axis, renderer, figure):
            y_axis = axis.yaxis
            y_axis.set_major_locator(_TicksUpTo(y_axis.get_major_locator(), limits[1]))
            y_axis.set_minor_locator(_TicksUpTo(y_axis.get_minor_locator(), limits[1]))
            return True
        axis.set_ylim(*limits)
    return False


def place_legends(figure, rounds=4):
    """Moves every axes' legend to a place where it covers no line or marker of the figure.

    In order: where it is, if clear; the first clear place of `LEGEND_LOCATIONS` inside its
    axes; the top of its axes after raising the y-range so that the data sit below it (when
    the legend takes at most `HEADROOM` of the height); else outside, to the right of its
    axes (the constrained layout makes room). The layout moves the axes when a legend goes
    outside, so the check repeats until no legend moves.
    """
    if not isinstance(figure.canvas, FigureCanvasAgg):
        FigureCanvasAgg(figure)
    renderer = figure.canvas.get_renderer()
    outside = set()
    for _ in range(rounds):
        figure.draw_without_rendering()  # runs the layout: the axes are where they will be
        moved = False
        for axis in figure.axes:
            legend = axis.get_legend()
            if legend is None or id(legend) in outside:
                continue
            if _clear(legend, axis, renderer, figure):
                continue
            for location in LEGEND_LOCATIONS:
                legend.set_loc(location)
                if _clear(legend, axis, renderer, figure):
                    break
            else:
                if _make_headroom(axis, legend, renderer, figure):
                    continue
                legend.set_loc("upper left")
                legend.set_bbox_to_anchor((1.02, 1.0), transform=axis.transAxes)
                outside.add(id(legend))
                moved = True
        if not moved:
            return
