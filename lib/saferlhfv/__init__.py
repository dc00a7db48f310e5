"""saferlhfv: a Jupyter-first tutorial and reproduction of Safe RLHF-V.

The library does the work the notebooks teach: the BeaverTails-V data layer and
its mini world (:mod:`saferlhfv.data`), vision-language models with scalar heads
(:mod:`saferlhfv.models`), the algorithms (:mod:`saferlhfv.algorithms`), the
training stages (:mod:`saferlhfv.train`) and the pipeline that chains them
(:mod:`saferlhfv.pipeline`).
"""

#: part of every artifact folder's name (``<stage>-<key>-v<version>``): bumped when a change alters what
#: a stage trains without changing its config, so that no cache serves runs of the old code. 0.2.0: the
#: rollouts sample the full softmax (they drew from the top 50 tokens before).
__version__ = "0.2.0"
