"""A volden model as a bioimage.io model package (spec 0.5), for the BioImage Model Zoo,
deepImageJ, ilastik and bioimageio.core.

The package runs the network as :func:`volden.predict.predict_array` does: the model's
normalisation is the pre-processing and its inverse the post-processing; the output axes
declare volden's default halo and the input reflection padding, so a tool reflects a whole
volume at its faces by the halo, as volden does, and overlaps the tiles of a large one by it
(bioimageio.core does both). The network is volden's own ``unet.py``, which needs only torch.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import unet
from ._version import __version__
from .errors import VoldenError
from .model import Model, load_models
from .paths import check_output_path
from .predict import default_halo, predict_array
from .synth import synthetic_volume

NOISE2SELF = "Batson J, Royer L. Noise2Self: Blind Denoising by Self-Supervision. ICML 2019 (PMLR 97:524-533)."
NOISE2SELF_DOI = "10.48550/arXiv.1901.11365"
AXES = ("z", "y", "x")
SAMPLE_SIDE = 32  # voxels per axis of the test tensor, at least (raised to the smallest valid size)


@dataclass(frozen=True)
class Exported:
    """What :func:`export_bioimageio` wrote."""

    path: Path
    halo: tuple[int, int, int]
    min_shape: tuple[int, int, int]
    step: tuple[int, int, int]
    test_shape: tuple[int, int, int]


def pick_model(model_path: str | Path, channel: int | None) -> Model:
    """The one model to export: a model folder, or ``channel`` of a per-channel model set."""
    models = load_models(model_path)
    if models.per_channel and channel is None:
        held = ", ".join(str(c) for c in sorted(models.models))  # type: ignore[type-var]
        raise VoldenError(f"{model_path} holds one model per channel ({held}); export one with --channel C")
    model = models.for_channel(channel)
    if model.config.outputs != 1:
        raise VoldenError(f"{model_path} is a prior for the posterior step (volden train --posterior), which a "
                          "bioimage.io package cannot run (each voxel needs a pass that masked it, then the "
                          "posterior mean); export a plain model")
    return model


def input_sizes(model: Model) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Smallest input (z, y, x) and the step between valid sizes: multiples of the pooling
    divisor, larger than the halo cropped from each face of the output."""
    step = model.config.divisor
    halo = default_halo(model)
    smallest = tuple(2 * h + s for h, s in zip(halo, step))  # the halo is a multiple of the divisor
    return smallest, step  # type: ignore[return-value]


def sample_volume(model: Model, shape: tuple[int, int, int]) -> np.ndarray:
    """A small synthetic volume with the intensity statistics the model was trained on."""
    noisy, _ = synthetic_volume(shape=shape, kind="nuclei", photons=20.0, seed=0, chunks=shape)
    raw = noisy.compute().astype(np.float32)
    raw = (raw - raw.mean()) / raw.std()
    return (raw * model.normalisation.std + model.normalisation.mean).astype(np.float32)


def export_bioimageio(
    model_path: str | Path, output: str | Path, channel: int | None = None, overwrite: bool = False
) -> Exported:
    """Write the model at ``model_path`` (``channel`` of a per-channel set) as a bioimage.io
    package ``output`` (.zip); it appears whole or not at all."""
    model = pick_model(model_path, channel)
    check_output_path(model_path, output, overwrite)
    if not Path(output).parent.is_dir():
        raise VoldenError(f"{Path(output).parent}: no such folder for {Path(output).name}")
    output = Path(output).absolute()
    spec = _bioimageio_spec()
    smallest, step = input_sizes(model)
    shape = tuple(-(-max(m, SAMPLE_SIDE) // s) * s for m, s in zip(smallest, step))
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.") as work:
        folder = Path(work)
        raw = sample_volume(model, shape)  # type: ignore[arg-type]
        np.save(folder / "test_input.npy", raw[None, None])
        # the spec's test runs the network on the test input as it is (no padding, the halo not cropped)
        np.save(folder / "test_output.npy", predict_array(model, raw, "cpu", edge=(0, 0, 0))[None, None])
        torch.save(model.network.state_dict(), folder / "weights.pt")
        with torch.no_grad():
            traced = torch.jit.trace(model.network.eval(), torch.from_numpy(model.normalisation.apply(raw))[None, None])
        traced.save(str(folder / "weights_torchscript.pt"))
        shutil.copyfile(unet.__file__, folder / "unet.py")
        (folder / "README.md").write_text(documentation(model, smallest, step))
        packaged = folder / output.name
        spec.save_bioimageio_package(_description(model, folder, smallest, step), output_path=packaged)
        if output.is_dir():
            shutil.rmtree(output)
        packaged.replace(output)
    return Exported(output, default_halo(model), smallest, step, shape)  # type: ignore[arg-type]


def _bioimageio_spec():
    """bioimageio.spec, or a one-line refusal where the optional extra is not installed."""
    try:
        import bioimageio.spec
    except ImportError:
        raise VoldenError("volden export needs bioimageio.spec: pip install 'volden[bioimageio]'") from None
    return bioimageio.spec


def _description(model: Model, folder: Path, smallest, step):
    """The package's rdf.yaml as a bioimageio.spec ModelDescr (validated as it is built)."""
    from bioimageio.spec.model import v0_5
    from pydantic import ValidationError

    try:
        return _model_descr(v0_5, model, folder, smallest, step)
    except ValidationError as err:
        problem = err.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        raise VoldenError(f"the model does not make a valid bioimage.io description ({where}: {problem['msg']})") from None


def _model_descr(v0_5, model: Model, folder: Path, smallest, step):
    voxel_size = model.training.get("voxel_size")
    scales = list(voxel_size) if voxel_size else [1.0, 1.0, 1.0]
    raw_id = v0_5.TensorId("raw")
    inputs = v0_5.InputTensorDescr(
        id=raw_id,
        description="a 3D volume in raw intensity units (camera counts), float32",
        axes=[
            v0_5.BatchAxis(),
            v0_5.ChannelAxis(channel_names=[v0_5.Identifier("intensity")]),
            *(v0_5.SpaceInputAxis(id=v0_5.AxisId(a), size=v0_5.ParameterizedSize(min=m, step=s), scale=sc)
              for a, m, s, sc in zip(AXES, smallest, step, scales)),
        ],
        test_tensor=v0_5.FileDescr(source=folder / "test_input.npy"),
        data=v0_5.IntervalOrRatioDataDescr(type="float32"),
        pad=v0_5.ReflectPadding(mode="reflect"),  # explicit: a default is not written out
        preprocessing=[v0_5.FixedZeroMeanUnitVarianceDescr(kwargs=v0_5.FixedZeroMeanUnitVarianceKwargs(
            mean=model.normalisation.mean, std=model.normalisation.std))],
    )
    outputs = v0_5.OutputTensorDescr(
        id=v0_5.TensorId("denoised"),
        description="the denoised volume in the input's intensity units",
        axes=[
            v0_5.BatchAxis(),
            v0_5.ChannelAxis(channel_names=[v0_5.Identifier("intensity")]),
            *(_output_axis(v0_5, v0_5.AxisId(a), raw_id, h, sc) for a, h, sc in zip(AXES, default_halo(model), scales)),
        ],
        test_tensor=v0_5.FileDescr(source=folder / "test_output.npy"),
        data=v0_5.IntervalOrRatioDataDescr(type="float32"),
        postprocessing=[v0_5.ScaleLinearDescr(kwargs=v0_5.ScaleLinearKwargs(
            gain=model.normalisation.std, offset=model.normalisation.mean))],
    )
    pytorch_version = v0_5.Version(torch.__version__.split("+")[0])
    weights = v0_5.WeightsDescr(
        pytorch_state_dict=v0_5.PytorchStateDictWeightsDescr(
            source=folder / "weights.pt",
            architecture=v0_5.ArchitectureFromFileDescr(
                source=folder / "unet.py", callable=v0_5.Identifier("unet_from_kwargs"),
                kwargs=model.config.to_dict()),
            pytorch_version=pytorch_version,
        ),
        torchscript=v0_5.TorchscriptWeightsDescr(
            source=folder / "weights_torchscript.pt", pytorch_version=pytorch_version, parent="pytorch_state_dict"),
    )
    return v0_5.ModelDescr(
        name=f"volden Noise2Self 3D denoiser {model.digest[:8]}",
        description="Self-supervised (Noise2Self) denoiser of 3D fluorescence microscopy volumes: "
                    "a 3D UNet trained by volden on the noisy volume alone.",
        authors=[v0_5.Author(name="volden user (replace with the model's authors before upload)")],
        cite=[v0_5.CiteEntry(text=NOISE2SELF, doi=v0_5.Doi(NOISE2SELF_DOI))],
        license=v0_5.LicenseId("CC-BY-4.0"),
        documentation=v0_5.FileDescr(source=folder / "README.md"),
        tags=["denoising", "3d", "noise2self", "self-supervised", "unet", "fluorescence-light-microscopy", "volden"],
        inputs=[inputs],
        outputs=[outputs],
        weights=weights,
        config={"volden": {"version": __version__, "weights_sha256": model.digest,
                           "halo": list(default_halo(model)), "divisor": list(step),
                           "voxel_size": list(voxel_size) if voxel_size else None}},
    )


def _output_axis(v0_5, axis, input_id, halo: int, scale: float):
    """An output axis as large as the input's, with ``halo`` voxels to crop at each face."""
    size = v0_5.SizeReference(tensor_id=input_id, axis_id=axis)
    if halo:
        return v0_5.SpaceOutputAxisWithHalo(id=axis, size=size, halo=halo, scale=scale)
    return v0_5.SpaceOutputAxis(id=axis, size=size, scale=scale)


def documentation(model: Model, smallest, step) -> str:
    """The package's README: what the model does, how to tile it, what to cite."""
    halo = default_halo(model)
    voxel_size = model.training.get("voxel_size")
    trained = model.training
    zyx = ",".join
    return f"""# volden Noise2Self 3D denoiser

A 3D UNet trained by volden with Noise2Self (J-invariant masking) on the noisy volume alone:
no clean ground truth. It removes shot and camera read noise that is independent from voxel to
voxel; it does not remove correlated noise (stripes, row noise).

- Input `raw` and output `denoised`: (batch, channel, z, y, x), one channel, float32, raw
  intensity units. Pre-processing subtracts {model.normalisation.mean:.6g} and divides by
  {model.normalisation.std:.6g} (the global statistics of the training volume); the
  post-processing undoes it.
- Sizes: z, y, x each at least {zyx(map(str, smallest))} and a multiple of
  {zyx(map(str, step))} (the pooling divisor) beyond that.
- Voxel size (z, y, x) of the training volume: {zyx(f'{v:g}' for v in voxel_size) if voxel_size else 'not recorded'}.
- Trained {trained.get('steps_done', 'an unknown number of')} steps, patch
  {zyx(map(str, trained.get('patch') or [])) or 'not recorded'}; volden {__version__}; weights SHA-256 {model.digest}.

## Tiling: the halo

The output axes declare a halo of {zyx(map(str, halo))} voxels (z, y, x): the voxels within it
of a tile's faces are cropped, so tiles must **overlap by this halo** on each side, and the
input is padded by reflection (`pad: reflect`) by the halo at the volume's faces, as volden
does. A tile is then at least {zyx(map(str, smallest))} voxels and larger in steps of
{zyx(map(str, step))} (the pooling divisor). bioimageio.core does both, and its prediction of a
whole volume or of one in tiles equals volden's (`volden.predict.predict_array`); a tool that
tiles without the overlap shows seams at the tile faces, and one that pads the volume's faces
with zeros changes a band one halo wide there.
`volden apply` on the volume itself blends overlapping blocks and writes OME-Zarr.

## Validation

The test tensors are a synthetic volume (nuclei, 20 photons per voxel, rescaled to the training
statistics) and volden's own prediction of it (`volden.predict.predict_array`) as the model
test of the spec takes it: on the input as it is, neither padded nor with the halo cropped (so
its outer halo band is not what a tool shows). bioimageio.core's model test reproduces it from
both weight formats. The quality of the denoising itself is the self-supervised loss on a
region held out from training (best {_loss(trained.get('best_val_loss'))}); `volden eval`
ranks models by it.

## Cite

{NOISE2SELF} doi:{NOISE2SELF_DOI}
"""


def _loss(value) -> str:
    return f"{value:.5g}" if isinstance(value, (int, float)) else "not recorded"
