"""saferlhfv: a Jupyter-first tutorial and reproduction of Safe RLHF-V.

The library does the work the notebooks teach: the BeaverTails-V data layer and
its mini world (:mod:`saferlhfv.data`), vision-language models with scalar heads
(:mod:`saferlhfv.models`), the algorithms (:mod:`saferlhfv.algorithms`), the
training stages (:mod:`saferlhfv.train`) and the pipeline that chains them
(:mod:`saferlhfv.pipeline`).
"""

__version__ = "0.1.0"
