"""Untrusted files: the library never unpickles or runs code it loads (docs/reliability.md).

Scans the library's source (the AST, so comments and docstrings do not count) and fails naming
``file:line`` for: ``torch.load(`` without ``weights_only=True``; ``trust_remote_code=True`` anywhere;
an ``Auto*.from_pretrained(`` or ``load_dataset(`` call that does not say ``trust_remote_code=False``.
"""

import ast
from pathlib import Path

import saferlhfv

PACKAGE = Path(saferlhfv.__file__).resolve().parent


def _calls():
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call):
                yield f"{path.relative_to(PACKAGE.parent)}:{node.lineno}", node


def _name(func: ast.expr) -> str:
    """``torch.load`` / ``AutoProcessor.from_pretrained`` / ``load_dataset``: the dotted callee."""
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _keyword(node: ast.Call, name: str):
    """The constant value of keyword ``name`` (``...`` when absent or not a constant)."""
    for kw in node.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else ...
    return ...


def test_torch_load_only_with_weights_only():
    bad = [where for where, node in _calls()
           if _name(node.func) == "torch.load" and _keyword(node, "weights_only") is not True]  # fmt: skip
    assert not bad, f"torch.load( without weights_only=True (unpickles arbitrary objects): {bad}"


def test_no_remote_code_is_ever_trusted():
    bad = [where for where, node in _calls() if _keyword(node, "trust_remote_code") not in (False, ...)]
    assert not bad, f"trust_remote_code other than False at: {bad}"


def test_hub_loads_say_trust_remote_code_false():
    """Every ``Auto*.from_pretrained`` / ``load_dataset`` call says so explicitly (the project's own
    processor class, ``TinyQwen2VLProcessor``, is local code and needs no remote code)."""
    loads = [(where, node) for where, node in _calls()
             if (_name(node.func).startswith("Auto") and _name(node.func).endswith(".from_pretrained"))
             or _name(node.func).split(".")[-1] == "load_dataset"]  # fmt: skip
    assert len(loads) >= 5  # the scan sees the loads (factory: 4, beavertails: 1)
    bad = [where for where, node in loads if _keyword(node, "trust_remote_code") is not False]
    assert not bad, f"a model / processor / dataset load without trust_remote_code=False at: {bad}"


def test_the_scan_finds_what_it_looks_for(tmp_path):
    """The checks above would see a violation (guards against a scan that matches nothing)."""
    source = "import torch\nx = torch.load('f')\ny = AutoModel.from_pretrained('m', trust_remote_code=True)\n"
    calls = [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call)]
    assert [_name(c.func) for c in calls] == ["torch.load", "AutoModel.from_pretrained"]
    assert _keyword(calls[0], "weights_only") is ... and _keyword(calls[1], "trust_remote_code") is True
