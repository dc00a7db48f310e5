"""Test-wide settings: figures and artifacts go to a temporary folder, never the repo.

At the repository root so that it also applies when only notebooks are collected.

Set at import so notebook kernels started by nbmake, and pytest-xdist workers (one shared artifact
cache), inherit them too.
"""

import os
import tempfile

_TMP = tempfile.mkdtemp(prefix="saferlhfv-tests-")
os.environ.setdefault("SAFERLHFV_FIGURES", os.path.join(_TMP, "figures"))
os.environ.setdefault("SAFERLHFV_ARTIFACTS", os.path.join(_TMP, "artifacts"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
