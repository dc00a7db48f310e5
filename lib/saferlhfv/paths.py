"""Where the project keeps its files.

Every path resolves from the repository root (found from this file, or from
``SAFERLHFV_ROOT``), never from the working directory: notebooks run with
their own folder as cwd. Each folder can be redirected with an environment
variable, which is how tests send figures and artifacts to a temporary folder.

===================  ======================  ==============================
folder               environment variable    default
===================  ======================  ==============================
repository root      ``SAFERLHFV_ROOT``      the folder holding pyproject.toml
data                 ``SAFERLHFV_DATA``      ``<root>/data``
figures              ``SAFERLHFV_FIGURES``   ``<root>/figures``
artifacts (cache)    ``SAFERLHFV_ARTIFACTS`` ``<root>/artifacts``
===================  ======================  ==============================
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["repo_root", "data_dir", "figures_dir", "artifacts_dir", "presets_dir"]


def repo_root() -> Path:
    """The repository root: ``$SAFERLHFV_ROOT`` or the nearest parent of this file with a pyproject.toml.

    Raises:
        FileNotFoundError: the package is installed outside a checkout (not editable) and
            ``SAFERLHFV_ROOT`` is unset.
    """
    env = os.environ.get("SAFERLHFV_ROOT")
    if env:
        return Path(env).expanduser().resolve()
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "lib" / "saferlhfv").is_dir():
            return parent
    raise FileNotFoundError(
        "cannot find the saferlhfv checkout (no pyproject.toml above "
        f"{here}); install with `pip install -e .` from the repository or set SAFERLHFV_ROOT"
    )


def _folder(env_var: str, default_name: str) -> Path:
    env = os.environ.get(env_var)
    return Path(env).expanduser().resolve() if env else repo_root() / default_name


def data_dir() -> Path:
    """Folder of datasets (the committed BeaverTails-V-mini lives here)."""
    return _folder("SAFERLHFV_DATA", "data")


def figures_dir() -> Path:
    """Folder that :func:`saferlhfv.plotting.save_figure` writes into."""
    return _folder("SAFERLHFV_FIGURES", "figures")


def artifacts_dir() -> Path:
    """Cache of trained models and pipeline outputs (not committed)."""
    return _folder("SAFERLHFV_ARTIFACTS", "artifacts")


def presets_dir() -> Path:
    """Folder of the preset YAML files shipped inside the package."""
    return Path(__file__).resolve().parent / "presets"
