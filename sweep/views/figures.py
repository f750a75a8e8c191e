"""What the report shows of a study, apart from the page: the search-space edge analysis and the
plotly figures (Optuna's own wherever Optuna has one). Reads the study only.
"""

from __future__ import annotations

import math

import optuna
import optuna.visualization as vis
import plotly.graph_objects as go
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState
from plotly.subplots import make_subplots

from sweep.search.presets import ORIGINAL
from sweep.core.records import CLASS_NAMES, VAL_DICE_FG
from sweep.core.records import TrialKey as K
from sweep.search.space import ADDED_OFF, EDGE_LIMITS

TARGET = "val dice_fg"
EDGE = 0.1  # the outer tenth of a range counts as its edge
TOP_FRACTION, MIN_TOP = 0.2, 3  # "the best trials": the top fifth, but at least three


# ---------------------------------------------------------------- search-space edges


def edge_warnings(study: optuna.Study) -> list[str]:
    """One line per parameter whose best trials all sit in the outer tenth of its searched range."""
    ranked = ranked_trials(study)
    if len(ranked) < MIN_TOP:
        return []
    top = ranked[: max(MIN_TOP, math.ceil(TOP_FRACTION * len(ranked)))]
    warnings = []
    for name, dist in top[0].distributions.items():
        values = [t.params[name] for t in top if name in t.params]
        side = _edge_side(dist, values)
        if side is None:
            continue
        shown = ", ".join(fmt(v) for v in values)
        if isinstance(dist, CategoricalDistribution):
            choices = ", ".join(fmt(c) for c in dist.choices)
            word = "largest" if side == "upper" else "smallest"
            advice = (f"consider adding {'larger' if side == 'upper' else 'smaller'} values"
                      if side not in EDGE_LIMITS.get(name, ()) else f"nothing {word[:-3]}er is meaningful here")
            warnings.append(
                f"{name}: the best {len(values)} trials all use the {word} choice ({shown}; choices {choices}); {advice}"
            )
        else:
            scale = ", log scale" if dist.log else ""
            advice = "consider widening the range"
            if side in EDGE_LIMITS.get(name, ()):
                advice = f"the range cannot meaningfully go {'higher' if side == 'upper' else 'lower'}"
            elif side == "lower" and dist.low == 0 and not dist.log:
                # 0 usually means "off" (no dropout, no augmentation): nothing lies beyond it.
                advice = "0 is a natural limit, so the best trials leave it off; widen the range only if it can go lower"
            warnings.append(
                f"{name}: the best trials sit at the {side} edge ({shown} in {fmt(dist.low)}..{fmt(dist.high)}{scale}); "
                + advice
            )
    epochs = _epoch_edge(top)
    if epochs:
        warnings.append(epochs)
    return warnings


def _epoch_edge(top: list[FrozenTrial]) -> str | None:
    """The epoch budget as a range too: do the best trials all peak in its last tenth?"""
    pairs = [(t.user_attrs.get(K.BEST_EPOCH), t.user_attrs.get(K.EPOCH_BUDGET)) for t in top]
    pairs = [(best, budget) for best, budget in pairs if best is not None and budget]
    if len(pairs) < MIN_TOP or not all(best > (1 - EDGE) * budget for best, budget in pairs):
        return None
    shown = ", ".join(f"{best} of {budget}" for best, budget in pairs)
    return (f"epochs: the best trials all peaked in the last tenth of their epoch budget (best epochs {shown}); "
            "they were still improving: consider a larger --epochs")


def _edge_side(dist, values: list) -> str | None:
    if not values:
        return None
    if isinstance(dist, (FloatDistribution, IntDistribution)):
        if dist.high <= dist.low:
            return None
        if dist.log:
            pos = [(math.log(v) - math.log(dist.low)) / (math.log(dist.high) - math.log(dist.low)) for v in values]
        else:
            pos = [(v - dist.low) / (dist.high - dist.low) for v in values]
        if all(p >= 1 - EDGE for p in pos):
            return "upper"
        if all(p <= EDGE for p in pos):
            return "lower"
        return None
    if isinstance(dist, CategoricalDistribution):
        choices = list(dist.choices)
        numeric = all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in choices)
        # Only an ordered numeric tuple has edges; ('constant', 'cosine') has none.
        if len(choices) < 2 or not numeric or choices != sorted(choices):
            return None
        if all(v == choices[-1] for v in values):
            return "upper"
        if all(v == choices[0] for v in values):
            return "lower"
    return None


def original_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Trials that ran the original coursework configuration (``configs/original.json``)."""
    return [t for t in study.get_trials(deepcopy=False) if t.params and _same_params(t.params, ORIGINAL)]


def _same_params(a: dict, b: dict) -> bool:
    a, b = {**ADDED_OFF, **a}, {**ADDED_OFF, **b}  # trials of older studies lack the later parameters
    if set(a) != set(b):
        return False
    return all(math.isclose(a[k], b[k], rel_tol=1e-9) if isinstance(b[k], float) else a[k] == b[k] for k in b)


def ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return sorted(complete, key=lambda t: t.value, reverse=maximize)


# ---------------------------------------------------------------- figures


def learning_curves(study: optuna.Study) -> go.Figure:
    """Optuna's intermediate-values plot, with pruned trials dashed grey so they read as stopped."""
    fig = vis.plot_intermediate_values(study)
    state = {f"Trial{t.number}": t.state for t in study.get_trials(deepcopy=False)}
    for trace in fig.data:
        s = state.get(trace.name)
        if s == TrialState.PRUNED:
            trace.update(line={"color": "#9a9a9a", "dash": "dash", "width": 1}, marker={"color": "#9a9a9a"}, opacity=0.8)
        elif s == TrialState.RUNNING:
            trace.update(line={"dash": "dot"})
        trace.update(name=f"trial {trace.name[5:]} ({s.name.lower() if s is not None else '?'})")
    last = max((max(t.x) for t in fig.data if t.x), default=1)
    fig.update_xaxes(dtick=_epoch_tick(last))
    fig.update_layout(
        title="Learning curves",
        xaxis_title="epoch",
        yaxis_title=TARGET,
        showlegend=True,
    )
    return fig


def history_figure(trial: FrozenTrial) -> go.Figure | None:
    """The best trial's per-epoch losses and per-class validation Dice (its ``history`` attr)."""
    history = trial.user_attrs.get(K.HISTORY)
    if not history or not history.get(VAL_DICE_FG):
        return None
    epochs = list(range(1, len(history[VAL_DICE_FG]) + 1))
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "validation Dice"))
    for key in ("train_loss", "val_loss"):
        fig.add_trace(go.Scatter(x=epochs, y=history.get(key), name=key.replace("_", " "), mode="lines+markers"), 1, 1)
    for key in [f"val_dice_{c}" for c in CLASS_NAMES] + [VAL_DICE_FG]:
        wide = {"width": 3} if key == VAL_DICE_FG else {}
        fig.add_trace(go.Scatter(x=epochs, y=history.get(key), name=key[4:], mode="lines+markers", line=wide), 1, 2)
    best = trial.user_attrs.get(K.BEST_EPOCH)
    if best:
        fig.add_vline(x=best, line_dash="dot", line_color="#888", annotation_text=f"best epoch {best}", row=1, col=2)
    fig.update_xaxes(title_text="epoch", dtick=_epoch_tick(len(epochs)))
    # An untrained first epoch can score a loss hundreds of times the rest: log scale keeps the curves readable.
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_layout(title=f"Trial {trial.number}: training history", height=420)
    return fig


def history_plot(study: optuna.Study) -> go.Figure:
    """Optuna's optimisation history, with whole trial numbers on the axis."""
    fig = vis.plot_optimization_history(study, target_name=TARGET)
    fig.update_xaxes(tickformat="d", dtick=max(1, math.ceil(len(study.trials) / 10)))
    return fig


def _epoch_tick(last_epoch: int) -> int:
    """Whole epochs on the axis (plotly would label 1.2, 1.4, ...), at most about ten labels."""
    return max(1, math.ceil(last_epoch / 10))


def fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
