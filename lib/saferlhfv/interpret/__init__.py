"""Inside the model: activation hooks and the two training-free mechanistic methods built on them.

* :mod:`~saferlhfv.interpret.hooks`: read / write the residual stream and the MLP neurons of the
  decoder by layer (LLaVA and Qwen2-VL families, tiny or 7B).
* :mod:`~saferlhfv.interpret.shiftdc`: ShiftDC, the image-induced activation shift and its
  calibration (Zou et al. 2025).
* :mod:`~saferlhfv.interpret.neurons`: safety neurons, change scores and dynamic activation
  patching between the precursor and an aligned policy (Chen et al. 2024).
"""
