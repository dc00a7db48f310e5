"""The peers' isolated virtual environments, built on demand from the package registry and cached.

Each peer (:func:`peer_envs`) runs in its own venv under :func:`cache_root` (``$SAFERLHFV_PEER_VENVS``, else
``$XDG_CACHE_HOME/saferlhfv/peer-venvs``, else ``~/.cache/saferlhfv/peer-venvs``), one folder per
peer, made with ``python -m venv`` and ``pip install`` of the peer's pinned packages. torch is pinned to
this environment's own version (``torch==2.13.0`` here, a CPU wheel pip finds locally): any other
version would pull a multi-GB CUDA build. A finished venv holds a marker file listing its packages; a
venv without it (interrupted) or with other packages is built again. Building one takes a few minutes
and about 1.5 GB of disk.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: the file a finished venv holds (its packages, as installed).
MARKER = "saferlhfv-peer.json"


class PeerEnvError(RuntimeError):
    """A peer's venv could not be built; the message says what to run by hand."""


def _torch_pin() -> str:
    import torch

    return f"torch=={torch.__version__.split('+')[0]}"


def _transformers_pin() -> str:
    import transformers

    return f"transformers=={transformers.__version__}"


@dataclass(frozen=True)
class PeerEnv:
    """One peer's environment: a folder name, pip requirements, the script it runs, an import check."""

    #: folder under :func:`cache_root`.
    name: str
    #: pip requirements (pins) besides torch, which is always pinned to ours.
    packages: tuple[str, ...]
    #: the script (beside this file) the benchmark runs with the venv's python.
    script: str
    #: a description for the report.
    label: str

    def requirements(self) -> list[str]:
        """Every requirement pip installs: our torch version, then :attr:`packages`."""
        return [_torch_pin(), *self.packages]

    def script_path(self) -> Path:
        """The peer's script (a plain file in ``saferlhfv/bench/``)."""
        return Path(__file__).with_name(self.script)


def peer_envs() -> dict[str, PeerEnv]:
    """The peers by key (a function: the pins read our torch and transformers versions)."""
    return {
        # TRL 0.19.1: PPOTrainer in its classic form; it needs transformers 4.x (4.53.3 is what pip resolves)
        "trl_ppo": PeerEnv(
            name="trl-0.19.1",
            packages=("trl==0.19.1", "transformers==4.53.3"),
            script="peer_trl_ppo.py",
            label="TRL 0.19.1 PPOTrainer (transformers 4.53.3)",
        ),
        # TRL's current RewardTrainer, on the same transformers as ours
        "trl_reward": PeerEnv(
            name="trl-1.16.0",
            packages=("trl==1.16.0", _transformers_pin()),
            script="peer_trl_reward.py",
            label="TRL 1.16.0 RewardTrainer",
        ),
    }


def cache_root() -> Path:
    """Where the peers' venvs live (see the module docstring)."""
    if os.environ.get("SAFERLHFV_PEER_VENVS"):
        return Path(os.environ["SAFERLHFV_PEER_VENVS"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "saferlhfv" / "peer-venvs"


def venv_python(folder: Path) -> Path:
    """The venv's interpreter."""
    return folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def manual_commands(env: PeerEnv, folder: Path) -> str:
    """The shell commands that build ``env``'s venv by hand (what the error message prints)."""
    reqs = " ".join(f'"{r}"' for r in env.requirements())
    return f"python3 -m venv {folder} && {venv_python(folder)} -m pip install {reqs}"


def is_ready(env: PeerEnv, folder: Path) -> bool:
    """True when ``folder`` holds a finished venv with exactly ``env``'s requirements."""
    marker = folder / MARKER
    if not (marker.is_file() and venv_python(folder).exists()):
        return False
    try:
        return json.loads(marker.read_text()).get("requirements") == env.requirements()
    except (OSError, ValueError):
        return False


def ensure_venv(
    env: PeerEnv, *, root: Path | None = None, progress: Callable[[str], None] = print, timeout_s: float = 1800
) -> Path:
    """The interpreter of ``env``'s venv, building the venv first if it is missing or stale.

    Args:
        root: the cache folder (default :func:`cache_root`).
        progress: receives one line per step (creating, installing, checking, done in N s).
        timeout_s: the longest the pip install may take, in seconds.

    Raises:
        PeerEnvError: venv creation, the install or the import check failed; the message names the log
            file and the commands to run by hand.
    """
    folder = (root or cache_root()) / env.name
    if is_ready(env, folder):
        return venv_python(folder)
    start = time.perf_counter()
    progress(f"building the peer venv {folder} ({', '.join(env.requirements())}); a few minutes, ~1.5 GB")
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    log = folder.parent / f"{env.name}.install.log"

    def step(cmd: list[str], what: str, timeout: float) -> None:
        with open(log, "a") as out:
            out.write(f"\n$ {' '.join(cmd)}\n")
            out.flush()
            try:
                proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False)
            except (OSError, subprocess.TimeoutExpired) as err:
                raise PeerEnvError(f"{what} failed ({err}); log: {log}\nbuild it by hand:\n  "
                                   f"{manual_commands(env, folder)}") from err  # fmt: skip
        if proc.returncode != 0:
            tail = "\n".join(log.read_text().splitlines()[-8:])
            raise PeerEnvError(
                f"{what} failed (exit {proc.returncode}); the end of {log}:\n{tail}\n"
                "build it by hand (PyPI must be reachable), then run the bench again:\n  "
                + manual_commands(env, folder)
            )

    log.write_text(f"building {folder}\n")
    progress("  creating the venv")
    step([sys.executable, "-m", "venv", str(folder)], "creating the venv", 300)
    progress("  pip install (torch comes from the local wheel; the rest from the package registry)")
    pip = [str(venv_python(folder)), "-m", "pip", "install", "--disable-pip-version-check"]
    step([*pip, *env.requirements()], "pip install", timeout_s)
    progress("  checking the imports")
    step([str(venv_python(folder)), "-c", "import torch, transformers, trl, datasets, tokenizers"], "import check", 300)
    (folder / MARKER).write_text(json.dumps({"requirements": env.requirements(), "built": time.time()}, indent=1))
    progress(f"  ready in {time.perf_counter() - start:.0f} s")
    return venv_python(folder)
