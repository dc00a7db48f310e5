"""Speed and memory of a preset: ``python -m saferlhfv.bench --preset tiny [--json]``.

Seven parts (``--parts``; all but ``concurrent`` by default), each a function returning a dict:

* ``model`` (:func:`bench_model`): the policy VLM's parameter count; one SFT optimiser step
  (forward + backward + AdamW) on ``--batch-size`` image + question + response sequences ->
  SFT training samples/s; sampling exactly ``--new-tokens`` tokens for ``--batch-size`` prompts
  with the KV cache -> generation tokens/s. Medians over ``--repeats`` after one warm-up.
* ``score`` (:func:`bench_score_model`): one RM-V / CM-V optimiser step on ``--batch-size``
  preference pairs (2 x batch sequences through a VLM + scalar head) -> pairs/s. RM-V and CM-V
  have the same architecture and cost per step (CM-V's sign term is free).
* ``ppo`` (:func:`bench_ppo`): whole PPO-Lagrangian iterations (rollout with the KV cache,
  scoring by four score models, reference log-probs, GAE, the multiplier, PPO epochs) of
  :func:`~saferlhfv.train.ppo.make_trainer` -> episodes/s. It uses the preset's trained
  SFT / RM-V / CM-V artifacts when they are cached, untrained copies otherwise (then every
  answer runs to ``ppo.max_new_tokens``: a worst case).
* ``methods`` (:func:`bench_methods`): the ``ppo`` part for the method of each PPO stage of the
  pipeline (PPO-Lagrangian, reward-only, RePO, four-role safe GRPO and critic-free RePO with their
  4 answers per prompt).
* ``stages`` (:func:`stage_times`): wall time of each pipeline stage and its end-to-end
  training samples/s (steps x batch / seconds, evaluation included), read from the cached
  artifacts' ``result.json`` (``seconds``) or from a pipeline run's ``summary.json``; a stage
  not trained yet is listed as missing (nothing is trained here).
* ``memory`` (:func:`role_memory`): the memory of PPO's six roles (actor, reference, RM-V, CM-V,
  reward critic, cost critic) in the trainer's three layouts (:data:`MEMORY_LAYOUTS`): six
  separate fully trained models; six models whose actor and critics train LoRA adapters; the
  shared base (one frozen model, five adapters of rank ``model.lora.r``, four heads; the
  reference = adapters off). Each layout builds the real trainer and runs one iteration in its
  own process: distinct weight storage, gradient + AdamW bytes, and peak memory are measured.

* ``concurrent`` (:func:`~saferlhfv.bench.concurrent.concurrent_jobs`): 1, 2 and 3 jobs at once
  (each an SFT step plus a sampled generation per round), with the thread policy of
  :mod:`saferlhfv.threads` and without it: the aggregate throughput over one job alone.

Peak memory is the process's peak resident memory (CPU) or peak allocated CUDA memory (GPU).
Timings are wall-clock on a possibly shared machine: compare medians, not single runs. The same
code measures the small preset on a GPU (it needs the pretrained weights).
"""

from saferlhfv.bench.measure import bench_methods, bench_model, bench_ppo, bench_score_model, stage_times
from saferlhfv.bench.memory import MEMORY_LAYOUTS, measure_layout, role_memory
from saferlhfv.bench.report import PARTS, format_report, main, run_bench

__all__ = [
    "PARTS",
    "MEMORY_LAYOUTS",
    "bench_model",
    "bench_score_model",
    "bench_ppo",
    "bench_methods",
    "stage_times",
    "measure_layout",
    "role_memory",
    "run_bench",
    "format_report",
    "main",
]
