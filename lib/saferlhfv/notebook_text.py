"""Find result numbers typed into a notebook's markdown, where they go stale.

A notebook's markdown may explain, define and quote the paper; a number about *our* results
(a safety rate, an F1, a runtime) must come from the run: a code cell that prints it or shows
it in a table. :func:`typed_numbers` flags the numbers that break this rule; ``tests/test_notebook_text.py``
runs it over every notebook, and :func:`what_to_notice_problems` checks each notebook's closing section.

The rule, applied to each markdown cell:

1. **Removed first** (never flagged, never counted as context): fenced code blocks, LaTeX math
   (``$$...$$`` and ``$...$``; an inline formula that is only a comparator, ``$\\ge$``, keeps its
   symbol), inline code spans (each replaced by the placeholder word ``CODE``), link targets
   ``](...)``, HTML comments and emphasis markers.
2. The rest is cut into **sentences**: at bullets, headings, blank lines and ``.``/``!``/``?``
   followed by a space and an upper-case letter, ``(`` or a quote.
3. **A result-shaped number** is a decimal (``0.79``, ``-0.5``, ``+0.15``), a percentage (``40 %``,
   ``40%``), a ``x ± y`` / ``x +- y`` form, or a number of seconds or minutes (``87 s``,
   ``6 min``, ``2 minutes``). Plain whole numbers (counts, layer sizes, years) and numbers written
   as words ("about a third") are not flagged: the net is for digits, the words stay a reviewer's call.
4. It is **flagged** when one of our metric names (:data:`METRIC_WORDS`: safety, helpfulness,
   accuracy, F1, AUC, win rate, recall, precision, detection, false positive, unsafe, cost, reward,
   lambda, tokens, refusals, restored share, gap, correlation...) lies within :data:`WINDOW` words
   before or after it, or when it is a runtime (seconds or minutes).
5. **Exempt**:

   * a number quoted from a source: the same sentence names the paper (``paper``, ``paper's``),
     another paper (``et al.``, ``arXiv``) or the ``public code`` *before* the number, and no word
     about our own run (``ours``, ``our``, ``we``, ``here``, ``tiny``) stands between them: "Paper: +40.9 %",
     "the paper reports 40.9 %" are exempt, "ours +36 %; the paper +34.2 %" flags the +36 %;
   * a **setting or a definition**: one of :data:`SETTING_WORDS` (threshold, cap, budget, tolerance,
     default, preset, slider, target, learning rate, noise, top, ``CODE`` for a config key such as
     ``lambda_lr``...) stands within :data:`SETTING_WINDOW` words before the number or right after
     it, or the number follows ``=``, ``≥``, ``≤``, ``>=``, ``<=``, ``<`` or ``>`` directly (a
     hyperparameter ``lambda_lr = 0.01``, a target ``>= 0.85``). "threshold 0.5 where the slider
     starts" is a setting, "recall 0.93" a result; "about 0.9" and "~0.9" are results too.

To state a result in prose, print the sentence from a code cell (``print(f"... {m['safety_rate']:.2f}")``)
or point at the printed output ("the table above") without restating its number.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "METRIC_WORDS",
    "SETTING_WORDS",
    "WINDOW",
    "SETTING_WINDOW",
    "Finding",
    "strip_markup",
    "sentences",
    "typed_numbers",
    "markdown_cells",
    "scan_notebook",
    "what_to_notice_problems",
]

WINDOW = 6
"""How many words either side of a number are searched for a metric name."""

SETTING_WINDOW = 3
"""How many words before a number are searched for a setting word."""

METRIC_WORDS = re.compile(
    r"^(?:safety|safer|safe|unsafe|harmless(?:ness)?|helpful(?:ness)?|accuracy|acc|f1|macro-f1|auc|win|"
    r"recall|precision|detect(?:ion|ed|s)?|false|alarms?|positives?|over-block(?:ing|s|ed)?|costs?|rewards?|"
    r"lambda|λ|multiplier|tokens?|seconds?|minutes?|s|min|refus(?:al|als|es|ed|e)|degenerate|correlation|"
    r"gap|restor(?:e|es|ed|ing)|gain|agreement|probe|f1-score)$"
)
"""One word (lower case, punctuation stripped) that names one of our metrics."""

SETTING_WORDS = re.compile(
    r"^(?:thresholds?|cap|capped|budgets?|tolerance|epsilon|default|preset|slider|targets?|lr|learning|noise|"
    r"set|settings?|code|top|alpha|beta|gamma|tau)$"
)
"""One word that makes a number beside it a setting or a definition, not a result (``code`` is the
placeholder of an inline code span: a config key such as ``lambda_lr``; ``top`` as in "the top 5 %
of the neurons")."""

_SOURCE = re.compile(r"\bpapers?\b|\bpaper's\b|\bet al\b|\barxiv\b|\bpublic code\b", re.IGNORECASE)
_OURS = re.compile(r"\b(?:ours?|we|here|tiny)\b", re.IGNORECASE)
_MATH_COMPARATOR = {r"\ge": "≥", r"\geq": "≥", r"\le": "≤", r"\leq": "≤", ">": ">", "<": "<", "=": "=",
                    r"\approx": "≈", r"\sim": "~", r"\pm": "±"}  # fmt: skip

_NUMBER = re.compile(
    r"(?P<pm>[-+−]?\d+(?:\.\d+)?\s*(?:±|\+-|\+/-)\s*\d+(?:\.\d+)?\s*%?)"
    r"|(?P<pct>[-+−]?\d+(?:[.,]\d+)?\s*%)"
    r"|(?P<time>\b\d+(?:\.\d+)?\s*(?:s|sec|seconds?|min|minutes?)\b)"
    r"|(?P<dec>(?<![\w.])[-+−]?\d*\.\d+(?![\w.]))"
)
_COMPARATOR = re.compile(r"(?:=|≥|≤|>=|<=|<|>)\s*$")


@dataclass(frozen=True)
class Finding:
    """A typed result number: the number as written and the sentence around it."""

    number: str
    sentence: str

    def __str__(self) -> str:
        return f"{self.number!r} in: {self.sentence}"


def strip_markup(markdown: str) -> str:
    """The markdown's prose: fenced code, LaTeX math, link targets, HTML comments and emphasis
    markers removed, inline code spans replaced by the word ``CODE``, inline math that is only a
    comparator (``$\\ge$``) replaced by its symbol."""
    text = re.sub(r"```.*?```", " ", markdown, flags=re.DOTALL)
    text = re.sub(r"<!--.*?-->", " ", text, flags=re.DOTALL)
    text = re.sub(r"`[^`]*`", " CODE ", text)
    text = re.sub(r"\$\$.*?\$\$", " ", text, flags=re.DOTALL)
    text = re.sub(
        r"(?<!\\)\$(.+?)(?<!\\)\$",
        lambda m: f" {_MATH_COMPARATOR.get(m.group(1).strip(), ' ')} ",
        text,
        flags=re.DOTALL,
    )
    text = re.sub(r"\]\([^)]*\)", "]", text)
    text = text.replace("**", "")
    text = re.sub(r"(?<![\w*])\*(\S[^*\n]*?)\*(?![\w*])", r"\1", text)
    return text


def sentences(text: str) -> list[str]:
    """Cut prose into sentences: at bullets, headings, blank lines and sentence ends."""
    blocks = re.split(r"\n\s*\n|\n(?=\s*(?:[*\-+]|\d+\.|#+)\s)", text)
    out = []
    for block in blocks:
        for part in re.split(r"(?<=[.!?])\s+(?=[A-Z(\"'])", block):
            part = " ".join(part.split())
            if part:
                out.append(part)
    return out


def _words(text: str) -> list[str]:
    return [w.strip(".,;:!?()[]*_\"'").lower() for w in text.split()]


def _quoted_from_source(before: str) -> bool:
    """A source (the paper, another paper, the public code) is named before the number, and no
    word about our own run (ours, we, here, tiny) comes between them."""
    cues = list(_SOURCE.finditer(before))
    return bool(cues) and not _OURS.search(before[cues[-1].end() :])


def typed_numbers(markdown: str) -> list[Finding]:
    """Result numbers typed into one markdown text (see the module docstring for the rule)."""
    findings = []
    for sentence in sentences(strip_markup(markdown)):
        for match in _NUMBER.finditer(sentence):
            before, after = sentence[: match.start()], sentence[match.end() :]
            if _quoted_from_source(before) or _COMPARATOR.search(before):
                continue
            words_before, words_after = _words(before), _words(after)
            if any(SETTING_WORDS.match(w) for w in words_before[-SETTING_WINDOW:] + words_after[:1]):
                continue
            near = words_before[-WINDOW:] + words_after[:WINDOW]
            if match.lastgroup == "time" or any(METRIC_WORDS.match(w) for w in near):
                findings.append(Finding(match.group().strip(), sentence))
    return findings


def markdown_cells(path: str | Path) -> list[tuple[int, str]]:
    """``(cell index, source)`` of every markdown cell of a notebook."""
    cells = json.loads(Path(path).read_text(encoding="utf-8"))["cells"]
    return [(i, "".join(c["source"])) for i, c in enumerate(cells) if c["cell_type"] == "markdown"]


def scan_notebook(path: str | Path) -> list[tuple[int, Finding]]:
    """``(cell index, finding)`` for every typed result number in a notebook's markdown."""
    return [(i, f) for i, source in markdown_cells(path) for f in typed_numbers(source)]


def what_to_notice_problems(path: str | Path) -> list[str]:
    """What is wrong with a notebook's closing section (empty when nothing is).

    The last cell must be markdown with a ``## What to notice`` heading, followed by at least one
    bullet and by a line that mentions the paper (its corresponding number, or that it has none).
    """
    cells = json.loads(Path(path).read_text(encoding="utf-8"))["cells"]
    if not cells or cells[-1]["cell_type"] != "markdown":
        return ["the last cell is not a markdown cell"]
    lines = "".join(cells[-1]["source"]).splitlines()
    heading = [i for i, line in enumerate(lines) if re.match(r"^##\s+What to notice\s*$", line.strip())]
    if not heading:
        return ["the last cell has no '## What to notice' heading"]
    section = lines[heading[-1] + 1 :]
    problems = []
    if not any(re.match(r"^\s*[*\-+]\s", line) for line in section):
        problems.append("'What to notice' has no bullet")
    if not any(re.search(r"\bpaper", line, re.IGNORECASE) for line in section):
        problems.append("'What to notice' has no line that mentions the paper")
    return problems
