"""The live loss curve of the widget: the training loss of every step, drawn as it arrives."""

from __future__ import annotations

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure

BACKGROUND, FOREGROUND = "#262930", "#f0f1f2"  # napari's dark theme


class LossCurve(FigureCanvasQTAgg):
    """Training loss (masked MSE) against step; redrawn when Qt is idle."""

    def __init__(self) -> None:
        figure = Figure(figsize=(3.2, 2.0), facecolor=BACKGROUND, layout="constrained")
        super().__init__(figure)
        self.axes = figure.add_subplot()
        self.axes.set_facecolor(BACKGROUND)
        for side in self.axes.spines.values():
            side.set_color(FOREGROUND)
        self.axes.tick_params(colors=FOREGROUND, labelsize=7)
        self.axes.set_xlabel("step", color=FOREGROUND, fontsize=8)
        self.axes.set_ylabel("loss", color=FOREGROUND, fontsize=8)
        (self.line,) = self.axes.plot([], [], color="#7ec4ff", linewidth=1)
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.setMinimumHeight(160)

    def clear(self) -> None:
        self.steps, self.losses = [], []
        self._redraw()

    def add(self, step: int, loss: float) -> None:
        self.steps.append(step)
        self.losses.append(loss)
        self._redraw()

    def _redraw(self) -> None:
        self.line.set_data(self.steps, self.losses)
        self.axes.relim()
        self.axes.autoscale_view()
        self.draw_idle()
