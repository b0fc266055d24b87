"""volden in napari: a dock widget that trains or loads a model and adds the denoised layer.

Registered with napari through the npe2 manifest ``napari.yaml`` beside this file (the
``napari.manifest`` entry point); needs the ``napari`` extra: ``pip install -e '.[napari]'``.
"""
