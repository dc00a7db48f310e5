r"""Interactive explorers of notebook 06: the multiplier's dynamics, the budget's trade-off, live samples.

Every widget here is a thin ``ipywidgets`` shell around a **pure library function**
(tested without a browser): a slider change calls the function with the new settings and
redraws the figure from what it returns.

* :class:`DualDynamicsExplorer`: the multiplier's settings over :func:`saferlhfv.dual.simulate_dual`
  (a fast model of the policy's response on a :mod:`~saferlhfv.rollout_table`).
* :class:`TradeoffExplorer`: a budget slider along the frontier of a trained budget sweep
  (:func:`saferlhfv.dual.frontier_from_runs`, :func:`saferlhfv.dual.tradeoff_at`).
* :class:`LiveSampleExplorer`: a picture and a question, both policies' answers and every
  verdict (:func:`saferlhfv.live.live_sample`).
* :class:`ThresholdExplorer` (notebook 04): a guard's threshold against detection and over-blocking
  (:func:`saferlhfv.guardrail.threshold_tradeoff`).
"""

from __future__ import annotations

import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from saferlhfv.dual import DualSettings, dynamics_summary, equilibrium, frontier_from_runs, simulate_dual, tradeoff_at
from saferlhfv.guardrail import threshold_tradeoff
from saferlhfv.live import LiveModels, live_sample, question_choices, verdict_rows
from saferlhfv.plotting import plot_dual, plot_threshold_curves, plot_tradeoff, short_category
from saferlhfv.rollout_table import RolloutTable

__all__ = ["DualDynamicsExplorer", "TradeoffExplorer", "LiveSampleExplorer", "ThresholdExplorer"]


def _in_ipython() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover
        return False
    return get_ipython() is not None


#: CSS class of every explorer's status line: what a browser test (or a user's stylesheet) finds it by
#: (a cell that trained something first also shows tqdm's progress bars, HTML widgets themselves)
STATUS_CLASS = "saferlhfv-explorer-status"


class _Explorer:
    """Shared shell: ``controls`` (name -> widget), a figure, an output area, ``result`` and ``error``."""

    def __init__(self) -> None:
        import ipywidgets as W

        self.controls: dict[str, Any] = {}
        self.result: Any = None
        self.error: str | None = None
        self.calls = 0
        self.status = W.HTML()
        self.status.add_class(STATUS_CLASS)
        self.output = W.Output()
        self.fig = None
        self._suspend = False

    def _watch(self) -> None:
        for widget in self.controls.values():
            widget.observe(self._on_change, names="value")

    def _on_change(self, _change=None) -> None:
        if not self._suspend:
            self.update()

    def set(self, **values) -> Any:
        """Set several controls at once (one recomputation); returns the new result."""
        self._suspend = True
        try:
            for name, value in values.items():
                self.controls[name].value = value
        finally:
            self._suspend = False
        self.update()
        return self.result

    def update(self) -> None:
        self.calls += 1
        try:
            self._compute()
            self.error = None
            self.status.value = self._status_text()
        except ValueError as err:  # a slider combination the algorithm rejects: say why, keep the last plot
            self.error = str(err)
            self.status.value = f"<span style='color:#b00'>{html.escape(self.error)}</span>"
        except Exception as err:  # a bug: show it in the widget, not only in JupyterLab's log console
            self.error = f"{type(err).__name__}: {err}"
            self.status.value = f"<span style='color:#b00'>the update failed: {html.escape(self.error)}</span>"
            if not _in_ipython():
                raise
            from IPython import get_ipython

            with self.output:
                get_ipython().showtraceback()
            return
        self._render()

    def _render(self) -> None:
        if self.fig is None or not _in_ipython():
            return
        from IPython.display import clear_output, display

        with self.output:
            clear_output(wait=True)
            display(self.fig)

    def _status_text(self) -> str:
        return ""

    def _ui(self):
        raise NotImplementedError

    @property
    def ui(self):
        """The widget tree to display."""
        return self._ui()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.ui)


class DualDynamicsExplorer(_Explorer):
    """Sliders for the multiplier's settings over :func:`simulate_dual`; ``result`` is its last output.

    Args:
        table: the rollout table (:func:`~saferlhfv.rollout_table.ensure_rollout_table`).
        settings: initial slider values (e.g. ``DualSettings.from_ppo(cfg.ppo)``); ``rollout_batch_size``,
            ``seed`` and ``sampled`` have no slider and keep these values.

    ``explorer.controls[name].value = x`` (or ``explorer.set(name=x)``) recomputes ``explorer.result``
    (:func:`simulate_dual`'s arrays), ``explorer.summary`` (:func:`dynamics_summary`) and
    ``explorer.lambda_star`` (:func:`equilibrium`), and redraws ``explorer.fig``: ``fig.axes[0]`` lambda,
    ``[1]`` E[C] (``lines[1]`` the budget), ``[2]`` E[R], ``[3]`` oracle safety on harmful prompts.
    """

    def __init__(self, table: RolloutTable, settings: DualSettings | None = None) -> None:
        import ipywidgets as W

        super().__init__()
        self.table = table
        s = settings or DualSettings()
        lo, hi = float(np.floor(table.cost.min())), float(np.ceil(table.cost.max()))
        style = {"description_width": "110px"}
        layout = W.Layout(width="340px")

        def fs(value, a, b, step, desc, fmt=".2f"):
            return W.FloatSlider(value=value, min=a, max=b, step=step, description=desc, style=style,
                                 layout=layout, readout_format=fmt, continuous_update=False)  # fmt: skip

        def ls(value, a, b, desc):
            return W.FloatLogSlider(value=value, base=10, min=a, max=b, step=0.05, description=desc, style=style,
                                    layout=layout, readout_format=".3g", continuous_update=False)  # fmt: skip

        def ints(value, a, b, desc):
            return W.IntSlider(value=value, min=a, max=b, description=desc, style=style, layout=layout,
                               continuous_update=False)  # fmt: skip

        self.controls = {
            "threshold": fs(float(np.clip(s.threshold, lo, hi)), lo, hi, 0.01, "budget d", ".3f"),
            "lambda_init": ls(s.lambda_init, -2, 2, "lambda_init"),
            "lambda_lr": ls(s.lambda_lr, -3, 0.5, "lambda_lr"),
            "lambda_max": fs(s.lambda_max if s.lambda_max is not None else 100.0, 0.1, 100.0, 0.1, "lambda_max"),
            "lambda_update_delay_steps": ints(s.lambda_update_delay_steps, 0, 50, "update delay"),
            "cost_window": ints(s.cost_window, 1, 1024, "cost window"),
            "tau": ls(s.tau, -1, 1, "tau (KL temp.)"),
            "policy_lr": ls(s.policy_lr, -2, 0.3, "policy step"),
            "iterations": ints(s.iterations, 10, 1000, "iterations"),
        }
        self.base = s
        self._watch()
        self.fig = None
        self.update()

    @property
    def settings(self) -> DualSettings:
        """The settings the sliders currently describe."""
        c = self.controls
        return self.base.replace(
            threshold=float(c["threshold"].value),
            lambda_init=float(c["lambda_init"].value),
            lambda_lr=float(c["lambda_lr"].value),
            lambda_max=float(c["lambda_max"].value),
            lambda_update_delay_steps=int(c["lambda_update_delay_steps"].value),
            cost_window=int(c["cost_window"].value),
            tau=float(c["tau"].value),
            policy_lr=float(c["policy_lr"].value),
            iterations=int(c["iterations"].value),
        )

    def _compute(self) -> None:
        s = self.settings
        result = simulate_dual(self.table, s)
        self.result = result
        self.summary = dynamics_summary(result)
        self.lambda_star = equilibrium(self.table, s.threshold, s.tau)["lambda"]
        self.fig = plot_dual({"simulated": result}, fig=self.fig, equilibria={"simulated": self.lambda_star})

    def _status_text(self) -> str:
        m = self.summary
        star = f"{self.lambda_star:.3g}" if math.isfinite(self.lambda_star) else "none (budget out of reach)"
        return (
            f"final lambda {m['final_lambda']:.3g} (stationary lambda* for this budget: {star}); "
            f"last half: lambda range {m['lambda_range']:.3g}, E[C] crosses d {m['cost_crossings']} times, "
            f"mean E[C] - d {m['mean_gap']:+.3f}"
        )

    def _ui(self):
        import ipywidgets as W

        c = list(self.controls.values())
        return W.VBox([W.HBox([W.VBox(c[0:3]), W.VBox(c[3:6]), W.VBox(c[6:9])]), self.status, self.output])


class TradeoffExplorer(_Explorer):
    """A budget slider moving a point along the frontier of trained budgets, per-category bars beside it.

    ``explorer.controls["threshold"].value = d`` recomputes ``explorer.result`` (:func:`tradeoff_at`).
    """

    def __init__(
        self,
        runs: Sequence[Mapping[str, Any]],
        *,
        precursor: Mapping[str, Any] | None = None,
        extra: Mapping[str, Mapping[str, float]] | None = None,
        threshold: float | None = None,
    ) -> None:
        import ipywidgets as W

        super().__init__()
        self.frontier = frontier_from_runs(runs)
        self.precursor, self.extra = precursor, extra
        d = self.frontier["threshold"]
        lo, hi = float(d.min()), float(d.max())
        step = max((hi - lo) / 100, 0.01)
        value = float(np.clip(d[len(d) // 2] if threshold is None else threshold, lo, hi))
        self.controls = {
            "threshold": W.FloatSlider(
                value=value,
                min=lo,
                max=max(hi, lo + step),
                step=step,
                description="budget d",
                continuous_update=False,
                layout=W.Layout(width="500px"),
            )  # fmt: skip
        }
        self._watch()
        self.update()

    def _compute(self) -> None:
        self.result = tradeoff_at(self.frontier, self.controls["threshold"].value)
        self.fig = plot_tradeoff(self.frontier, self.result, precursor=self.precursor, extra=self.extra, fig=self.fig)

    def _status_text(self) -> str:
        r = self.result
        where = (
            f"interpolated between the runs trained at d = {r['between'][0]:g} and {r['between'][1]:g}"
            if r["interpolated"]
            else "a trained run"
        )
        return (
            f"d = {r['threshold']:.2f} ({where}): safety rate {r['safety_rate']:.2f}, harmful-prompt safety "
            f"{r['harmful_safety_rate']:.2f}, helpful win rate {r['helpful_winrate']:.2f}, "
            f"mean cost {r['mean_cost']:.2f}"
        )

    def _ui(self):
        import ipywidgets as W

        return W.VBox([self.controls["threshold"], self.status, self.output])


class ThresholdExplorer(_Explorer):
    """A threshold slider over a guard's score table: what it catches and what it blocks for nothing.

    Args:
        table: rows with ``p_unsafe``, ``severity_level`` and ``is_unsafe`` (one moderation mode).
        threshold: where the slider starts.
        grid: ``[G]`` thresholds at which the curves are drawn (default 25 from 0.02 to 0.98).

    ``explorer.controls["threshold"].value = t`` recomputes ``explorer.result``
    (:func:`threshold_tradeoff` of ``table`` at ``t``), the status line and the figure's vertical line.
    """

    def __init__(
        self, table, *, threshold: float = 0.5, step: float = 0.05, grid: np.ndarray | None = None, title: str = ""
    ) -> None:
        import ipywidgets as W

        super().__init__()
        self.table = list(table)
        self.grid = np.linspace(0.02, 0.98, 25) if grid is None else np.asarray(grid, dtype=float)
        self.curve = [threshold_tradeoff(self.table, float(t)) for t in self.grid]
        self.title = title
        self.controls = {
            "threshold": W.FloatSlider(
                value=threshold,
                min=0.0,
                max=1.0,
                step=step,
                description="threshold",
                continuous_update=False,
                layout=W.Layout(width="500px"),
            )  # fmt: skip
        }
        self._watch()
        self.update()

    def _compute(self) -> None:
        t = float(self.controls["threshold"].value)
        self.result = threshold_tradeoff(self.table, t)
        self.fig = plot_threshold_curves(self.grid, self.curve, t, title=self.title, fig=self.fig)

    def _status_text(self) -> str:
        r = self.result

        def num(key):
            return "undefined" if r[key] is None else f"{r[key]:.3f}"

        return (
            f"threshold {r['threshold']:.2f}: recall {num('recall')} (unsafe answers caught), false-positive rate "
            f"{num('false_positive_rate')} (safe answers redrawn for nothing), precision {num('precision')}"
        )

    def _ui(self):
        import ipywidgets as W

        return W.VBox([self.controls["threshold"], self.status, self.output])


def _rows_html(rows: list[dict[str, Any]], note: str = "") -> str:
    head = "".join(f"<th style='text-align:left;padding:2px 6px'>{html.escape(k)}</th>" for k in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td style='padding:2px 6px'>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>"
        for r in rows
    )
    extra = f"<div style='color:#666'>{html.escape(note)}</div>" if note else ""
    return f"<table>{'<tr>' + head + '</tr>'}{body}</table>{extra}"


def _png(image, size: int = 160) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").resize((size, size)).save(buf, format="PNG")
    return buf.getvalue()


class LiveSampleExplorer(_Explorer):
    """Pick a picture (an evaluation prompt) and a question; see both policies' answers and every verdict.

    ``controls``: ``image`` (prompt index), ``question`` (index into :func:`question_choices`),
    ``seed``. ``result`` is :func:`live_sample`'s output, ``rows`` its :func:`verdict_rows`.
    """

    def __init__(self, models: LiveModels, prompts, *, index: int = 0, max_new_tokens: int = 40) -> None:
        import ipywidgets as W

        super().__init__()
        self.models, self.prompts, self.max_new_tokens = models, prompts, max_new_tokens
        labels = []
        for i in range(len(prompts)):
            ctx = json.loads(prompts[i]["context"])
            kind = "harmful" if ctx.get("harmful") else "benign"
            labels.append((f"{i}: {ctx.get('object', '?')} · {short_category(ctx.get('category', '?'))} · {kind}", i))
        self.controls = {
            "image": W.Dropdown(options=labels, value=index, description="picture", layout=W.Layout(width="480px")),
            "question": W.Dropdown(options=[], description="question", layout=W.Layout(width="640px")),
            "seed": W.IntSlider(value=0, min=0, max=50, description="seed", continuous_update=False),
        }
        self.picture = W.Image(format="png", width=160, height=160)
        self.table = W.HTML()
        self._set_questions()
        self.controls["image"].observe(self._on_image, names="value")
        for name in ("question", "seed"):
            self.controls[name].observe(self._on_change, names="value")
        self.update()

    def _set_questions(self) -> None:
        row = self.prompts[int(self.controls["image"].value)]
        self.choices = question_choices(row["context"])
        self._suspend = True
        try:
            self.controls["question"].options = [(q, i) for i, (q, _) in enumerate(self.choices)]
            self.controls["question"].value = 0
        finally:
            self._suspend = False

    def _on_image(self, _change=None) -> None:
        self._set_questions()
        self.update()

    def _compute(self) -> None:
        row = self.prompts[int(self.controls["image"].value)]
        question, context = self.choices[int(self.controls["question"].value)]
        self.result = live_sample(
            self.models,
            row["image"],
            question,
            context,
            seed=int(self.controls["seed"].value),
            max_new_tokens=self.max_new_tokens,
        )
        self.rows = verdict_rows(self.result)
        self.picture.value = _png(row["image"])
        note = "" if self.models.guard is not None else f"guard: {self.models.guard_note or 'not loaded'}"
        self.table.value = _rows_html(self.rows, note)

    def _status_text(self) -> str:
        h = self.result["harmful_prompt"]
        return "" if h is None else f"the oracle reads this request as <b>{'harmful' if h else 'benign'}</b>"

    def _ui(self):
        import ipywidgets as W

        c = self.controls
        return W.VBox([W.HBox([self.picture, W.VBox([c["image"], c["question"], c["seed"], self.status])]), self.table])
