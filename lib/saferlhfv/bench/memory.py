"""The memory of PPO's roles in each layout, measured on the real trainer, one process per layout."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from saferlhfv.bench.measure import _device, _peak_memory_mb, _rss_mb, _untrained_upstream
from saferlhfv.config import Config, apply_overrides

#: the three ways the PPO trainer can hold its six roles, as (name, config overrides).
_GRPO = {"ppo.algorithm": "grpo_lag", "ppo.samples_per_prompt": 2}
MEMORY_LAYOUTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("six separate models", {"model.lora.enabled": False, "ppo.shared_base": False}),
    ("six models, LoRA actor + critics", {"model.lora.enabled": True, "ppo.shared_base": False}),
    ("shared base + 5 LoRA adapters", {"model.lora.enabled": True, "ppo.shared_base": True}),
    ("safe GRPO: four separate models", {"model.lora.enabled": False, "ppo.shared_base": False, **_GRPO}),
    ("safe GRPO: shared base + 3 adapters", {"model.lora.enabled": True, "ppo.shared_base": True, **_GRPO}),
)


def _tensor_bytes(tensors) -> int:
    """Bytes of distinct storages among ``tensors`` (a weight shared by several roles counts once)."""
    seen, total = set(), 0
    for t in tensors:
        key = (t.device, t.untyped_storage().data_ptr())
        if key in seen:
            continue
        seen.add(key)
        total += t.untyped_storage().nbytes()
    return total


def measure_layout(cfg: Config, upstream: dict[str, Path], *, iterations: int = 1) -> dict[str, Any]:
    """Build :func:`~saferlhfv.train.ppo.make_trainer` as ``cfg`` says, run ``iterations``, measure memory.

    Run it in a fresh process (as :func:`role_memory` does) for a clean peak.

    Returns:
        ``weights_mb``: distinct parameter + buffer storage of the six roles; ``train_state_mb``:
        the gradients (one per trainable weight, held during each update) plus the AdamW moments
        found in the optimisers after the iterations; ``trainable_parameters``; ``peak_mb``: the
        peak CUDA memory allocated (GPU) or the growth of the process's peak resident memory over
        its resident memory before building (CPU), through building and the iterations.
    """
    from saferlhfv.train.ppo import make_trainer

    device = _device()
    run_cfg = apply_overrides(cfg, {"ppo.iterations": iterations, "ppo.save_every": 0})
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else _rss_mb()
    with tempfile.TemporaryDirectory(prefix="saferlhfv-bench-") as tmp:
        trainer = make_trainer(run_cfg, **upstream, out_dir=tmp)
        for _ in range(iterations):
            trainer.step()
        peak = _peak_memory_mb(device) - before
    r = trainer.roles
    roles = r.models()
    weights = _tensor_bytes(t for m in roles for t in list(m.parameters()) + list(m.buffers()))
    trainable = [p for params in r.params.values() for p in params]
    opts = [opt for opt in (r.opt_actor, r.opt_reward_critic, r.opt_cost_critic) if opt is not None]
    moments = [v for opt in opts for st in opt.state.values() for v in st.values()
               if torch.is_tensor(v) and v.dim() > 0]  # fmt: skip
    mb = 2**20
    return {
        "weights_mb": round(weights / mb, 2),
        "train_state_mb": round((_tensor_bytes(trainable) + _tensor_bytes(moments)) / mb, 2),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "peak_mb": round(peak, 1),
    }


def role_memory(cfg: Config, *, iterations: int = 1) -> dict[str, Any]:
    """Memory of PPO's six roles in each of :data:`MEMORY_LAYOUTS`, measured on the real trainer.

    The upstream models are untrained copies of the preset's policy, with RM-V / CM-V saved as LoRA
    adapters of rank ``model.lora.r`` (and merged, for the layouts that load whole models). Each
    layout runs :func:`measure_layout` in a fresh Python process, so one layout's peak does not hide
    another's. That process is the busy worker while this one waits (:mod:`saferlhfv.threads`): beside
    another job it takes its share of the cores instead of all of them.

    Returns:
        ``layouts``: one row per layout (``layout`` + the fields of :func:`measure_layout`);
        ``lora_rank``; ``separate_over_shared``: weights of six separate models / shared base;
        ``grpo_over_ppo_train_state``: gradient + AdamW bytes of four-role GRPO / six-role PPO (separate models).
    """
    import os
    import subprocess

    from saferlhfv.threads import idle

    with tempfile.TemporaryDirectory(prefix="saferlhfv-bench-") as tmp:
        tmp = Path(tmp)
        upstream = _untrained_upstream(cfg, tmp / "upstream", lora=True)
        rows = []
        for name, overrides in MEMORY_LAYOUTS:
            cfg_file = tmp / "config.yaml"
            apply_overrides(cfg, overrides).save(cfg_file)
            up_file = tmp / "upstream.json"
            up_file.write_text(json.dumps({k: str(v) for k, v in upstream.items()}))
            cmd = [sys.executable, "-m", "saferlhfv.bench.memory", str(cfg_file), str(up_file), str(iterations)]
            with idle():  # the child computes, this process waits
                proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), check=False)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("MEASURED ")]
            if proc.returncode != 0 or not lines:
                raise RuntimeError(f"measuring '{name}' failed: {proc.stderr.strip().splitlines()[-1:]}")
            rows.append({"layout": name, **json.loads(lines[-1][len("MEASURED ") :])})
    return {
        "layouts": rows,
        "lora_rank": cfg.model.lora.r,
        "iterations": iterations,
        "peak_kind": "CUDA allocated" if _device().type == "cuda" else "peak resident memory growth (CPU)",
        "separate_over_shared": round(rows[0]["weights_mb"] / rows[2]["weights_mb"], 2),
        "grpo_over_ppo_train_state": round(rows[3]["train_state_mb"] / rows[0]["train_state_mb"], 3),
    }


def _measure_one(argv: list[str]) -> int:
    """``python -m saferlhfv.bench.memory CONFIG.yaml UPSTREAM.json ITERATIONS``: one layout in this
    process (what :func:`role_memory` starts per layout); prints ``MEASURED {json}``."""
    from saferlhfv.config import load_config
    from saferlhfv.threads import busy

    cfg_file, up_file, iterations = argv
    upstream = {k: Path(v) for k, v in json.loads(Path(up_file).read_text()).items()}
    with busy():  # a busy worker: its share of the cores, not all of them beside another job
        measured = measure_layout(load_config(cfg_file), upstream, iterations=int(iterations))
    print("MEASURED " + json.dumps(measured))
    return 0


if __name__ == "__main__":
    sys.exit(_measure_one(sys.argv[1:]))
