"""``weakseg annotate``: draw scribbles and tick image-level tags on your own images in a browser.

* :mod:`weakseg.annotate.store`: the on-disk layout (a dataset root that training reads directly) and every write
  to it (atomic, only inside the output folder).
* :mod:`weakseg.annotate.overlay`: the prediction and uncertainty overlays of a trained checkpoint.
* :mod:`weakseg.annotate.server`: the local HTTP API and the page (``static/``: plain JavaScript and a canvas).
* :mod:`weakseg.annotate.cli`: the ``weakseg annotate`` command.
"""
