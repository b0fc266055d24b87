"""The README's napari screenshot: the widget after it trained on the sample volume and denoised it.

Opens volden's sample (noisy synthetic nuclei) in a napari window, trains through the widget for
``--minutes`` (the progress bar and loss curve fill), lets the widget add the denoised layer, and
writes the window, noisy and denoised side by side, to benchmarks/figures/napari_widget.png.
Needs a display: on a machine without a screen, run it under Xvfb:

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/napari_screenshot.py
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import imageio.v3 as iio
import napari
from qtpy.QtCore import QEventLoop
from qtpy.QtWidgets import QApplication

from volden.napari.sample import noisy_nuclei
from volden.napari.widget import DenoiseWidget

FIGURE = Path(__file__).resolve().parent / "figures" / "napari_widget.png"
WINDOW = (1500, 900)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="training time in the widget")
    parser.add_argument("--out", type=Path, default=FIGURE)
    args = parser.parse_args()

    viewer = napari.Viewer(show=True)
    viewer.window.resize(*WINDOW)
    data, kwargs, _ = noisy_nuclei()[0]
    viewer.add_image(data, **kwargs)
    widget = DenoiseWidget(viewer)
    viewer.window.add_dock_widget(widget, name="volden", area="right")
    with tempfile.TemporaryDirectory() as scratch:
        widget.minutes.setValue(args.minutes)
        widget.output_folder.setText(str(Path(scratch) / "nuclei-model"))
        widget.train_button.click()
        finished = QEventLoop()
        widget.worker.finished.connect(finished.quit)
        finished.exec()
        if "noisy nuclei denoised" not in viewer.layers:
            raise SystemExit(f"training gave no denoised layer: {widget.status.text()}")
        widget.model_folder.setText("nuclei-model")  # the folder a user would have picked, not the scratch path
        widget.status.setText("noisy nuclei denoised: computed plane by plane as you browse")
        widget.output_folder.setText("nuclei-model")
        viewer.canvas.grid.enabled = True
        viewer.layers.selection.active = viewer.layers["noisy nuclei denoised"]
        viewer.dims.current_step = (data.shape[0] // 2, 0, 0)
        QApplication.processEvents()
        viewer.reset_view()
        QApplication.processEvents()
        image = viewer.screenshot(canvas_only=False, flash=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(args.out, image)
    print(f"{args.out}: {image.shape[1]}x{image.shape[0]}")
    viewer.close()


if __name__ == "__main__":
    main()
