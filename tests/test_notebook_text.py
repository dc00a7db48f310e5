"""Numbers that never go stale: no result number typed into a notebook's markdown, and every
notebook closes with a "What to notice" section that sets the paper beside what was shown.

The rule is :mod:`saferlhfv.notebook_text`'s docstring; the first tests pin it on hand-made markdown.
"""

from pathlib import Path

import pytest

from saferlhfv.notebook_text import scan_notebook, typed_numbers, what_to_notice_problems

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def flagged(markdown: str) -> list[str]:
    return [f.number for f in typed_numbers(markdown)]


@pytest.mark.parametrize(
    "markdown, numbers",
    [
        ("PPO-Lagrangian reaches a safety rate of 0.87 on the held-out prompts.", ["0.87"]),
        ("* Benign helpfulness rises to **2.17 ± 0.16** over three seeds.", ["2.17 ± 0.16"]),
        ("The guard's detection rate is 82.5 % on typographic pictures.", ["82.5 %"]),
        ("The stage takes 87 s on one thread.", ["87 s"]),
        ("Ours: +36 % safety; the paper: +34.2 %.", ["+36 %"]),
        ("The paper's sign, but our gap is -0.63 in safety.", ["-0.63"]),
        ("Harmful-prompt safety ends at ~0.9, about 0.85 on seed 1.", ["0.9", "0.85"]),
        ("Benign helpfulness 1.55 $\\pm$ 0.39 over seeds.", ["1.55 ± 0.39"]),
        # code spans go before math: the dollars of `$OUT` open no formula
        ("Copy `$OUT/a.json`; safety reaches 0.87; see `$OUT/b.json`.", ["0.87"]),
    ],
)
def test_flags_typed_results(markdown, numbers):
    assert flagged(markdown) == numbers


@pytest.mark.parametrize(
    "markdown",
    [
        # LaTeX math, inline and display
        r"The multiplier steps by $\Delta\log\lambda = 0.1\,\lambda\,(\hat J_C - d)$ while the cost is over budget.",
        "$$J_C(\\theta) \\le -4.6 \\quad \\text{safety} \\ge 0.95$$",
        # inline code and fenced code
        "Call `threshold_tradeoff(table, 0.5)` to read the recall at one threshold.",
        "```python\nprint(f'safety {0.87}')\n```",
        # quoted from the paper (or another paper)
        "The paper reports that five rounds raise safety by **40.9 %** on average.",
        "Paper: +40.9 % safety over five rounds of filter and regenerate.",
        "* Paper: safety +34.2 %, helpfulness +34.3 % (7B models, GPT-4o judge).",
        "The paper's SCM: macro-F1 ≥ 0.95 at 18 % of the tokens on FineHarm.",
        "Zou et al. (arXiv 2502.13095) report a lower attack success rate.",
        # settings and definitions
        "The threshold 0.5 is where the slider starts; move it and watch recall and precision.",
        "A lambda_lr = 0.01 makes the multiplier crawl; lambda rises slowly.",
        "Raise `lambda_lr` to 1.0 and lambda oscillates.",
        "The targets on the tiny preset: top 5 % restores $\\ge$ 80 %, safeguard AUC >= 0.85.",
        "The mini world flips each label with probability `label_noise` (tiny preset: 0.1).",
        # no metric nearby, or no result-shaped number
        "The picture is 0.25 of the width of the board, drawn on a plain background.",
        "The tiny model has 4 layers of 344 neurons and reads 160 evaluation prompts of the safety split.",
        # pointing at the output instead of restating it
        "Compare the safety rate printed above with the precursor's.",
    ],
)
def test_leaves_math_code_paper_and_settings_alone(markdown):
    assert flagged(markdown) == []


def test_reports_the_sentence():
    (finding,) = typed_numbers("Setup first.\n\n* RM-V ranks pairs with accuracy 0.80 here. Then CM-V.")
    assert finding.number == "0.80" and finding.sentence == "* RM-V ranks pairs with accuracy 0.80 here."


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 9


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_typed_result_numbers(notebook):
    found = scan_notebook(notebook)
    listing = "\n".join(f"  {notebook.name} cell {i}: {f.number!r} in: {f.sentence}" for i, f in found)
    assert not found, (
        f"result numbers typed into the markdown of {notebook.name} (print them from a code cell, "
        f"or point at the output without restating them):\n{listing}"
    )


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_ends_with_what_to_notice_and_the_paper(notebook):
    assert what_to_notice_problems(notebook) == [], notebook.name


def test_what_to_notice_check(tmp_path):
    import nbformat

    def problems(*cells):
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_markdown_cell(c) if c.startswith("#") else nbformat.v4.new_code_cell(c)
                    for c in cells]  # fmt: skip
        path = tmp_path / "nb.ipynb"
        nbformat.write(nb, path)
        return what_to_notice_problems(path)

    assert problems("# Title", "x = 1", "## What to notice\n\n* A bullet.\n\nPaper: +40.9 %.") == []
    assert problems("# Title", "## What to notice\n\n* A bullet.", "x = 1") == ["the last cell is not a markdown cell"]
    assert problems("## What to notice\n\n* A bullet only.") == ["'What to notice' has no line that mentions the paper"]
    assert problems("## Summary\n\n* A bullet. The paper.") == ["the last cell has no '## What to notice' heading"]
