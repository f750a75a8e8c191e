"""`python -m sweep report`: one self-contained HTML file showing what the tuning playbook asks for.

The file opens offline: plotly.js is embedded once, pictures are data URIs. The storage is only
read. The figures and the edge analysis are ``sweep.views.figures``; this module lays out the page.
"""

from __future__ import annotations

import base64
import html
from datetime import datetime
from pathlib import Path

import optuna
import optuna.visualization as vis
import pandas as pd
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState

from data.files import output_file
from sweep.core import artifacts
from sweep.core import records as rec
from sweep.core import study as st
from sweep.core.errors import UsageError
from sweep.core.outputs import refuse_outputs
from sweep.views.figures import (
    MIN_TOP,
    TARGET,
    edge_warnings,
    fmt,
    history_figure,
    history_plot,
    learning_curves,
    original_trials,
    ranked_trials,
)
from sweep.core.records import CLASS_NAMES, TEST_OVERLAY, Evaluation, StudyKey
from sweep.core.records import TrialKey as K
from sweep.core.study import open_study_readonly

TOP_TRIALS = 10


def write_report(storage_url: str, study_name: str, out: str | Path) -> Path:
    path = Path(out)
    study = open_study_readonly(storage_url, study_name)
    refuse_outputs(f"--out {out}", [path], storage=storage_url, study=study)
    page = _Page(study, storage_url)
    try:
        with output_file(path) as tmp:
            tmp.write_text(page.render(), encoding="utf-8")
    except OSError as err:
        raise UsageError(f"--out {out}: cannot write ({err.strerror or err})") from None
    return path.resolve()


class _Page:
    """Collects sections in order; the first plot carries plotly.js, the rest refer to it."""

    def __init__(self, study: optuna.Study, storage_url: str) -> None:
        self.study = study
        self.storage_url = storage_url
        self.location = artifacts.location_of(study, storage_url)
        self.store = artifacts.open_store(self.location, create=False)  # a view creates nothing
        self._plotly_embedded = False

    def render(self) -> str:
        s = self.study
        ranked = ranked_trials(s)
        best = ranked[0] if ranked else None
        body = [header(s, self.storage_url, ranked)]
        body.append(self.section("Optimisation history", self.plot(history_plot(s) if ranked else None, "no complete trial yet")))
        body.append(self.section("Learning curves", '<p class="hint">val dice_fg per epoch; pruned trials dashed grey, running ones dotted.</p>'
                                 + self.plot(learning_curves(s) if s.trials else None, "no trials yet")))
        body.append(self.section("Parameter importances", self.importances(ranked)))
        body.append(self.section(f"{TARGET} against each hyperparameter", self.slices(ranked)))
        body.append(self.section("Parallel coordinates", self.plot(
            vis.plot_parallel_coordinate(s, target_name=TARGET) if ranked else None, "no complete trial yet")))
        body.append(self.section("Best trial", self.best_trial(best)))
        body.append(self.section("What the search gained", search_gained(s)))
        body.append(self.section("Against the original configuration", against_original(s, best)))
        body.append(self.section(f"Top {TOP_TRIALS} trials", top_table(ranked)))
        body.append(self.section("Search-space edges", self.edges(ranked)))
        body.append(self.section("Test evaluation", self.evaluation()))
        body.append(self.section("Reproduce", reproduce(s, self.storage_url)))
        title = f"Sweep report: study {s.study_name}"
        return _TEMPLATE.format(title=_e(title), body="\n".join(body))

    # -- pieces

    def plot(self, fig: go.Figure | None, missing: str, height: int = 450, keep_title: bool = False) -> str:
        if fig is None:
            return _note(missing)
        if not keep_title:  # the section heading says it already
            fig.update_layout(title=None)
        top = 60 if keep_title else 30
        fig.update_layout(height=fig.layout.height or height, template="plotly_white", margin={"t": top, "b": 50})
        div = fig.to_html(full_html=False, include_plotlyjs=not self._plotly_embedded, config={"displaylogo": False})
        self._plotly_embedded = True
        return div

    def section(self, title: str, content: str) -> str:
        anchor = title.lower().replace(" ", "-")
        return f'<section id="{_e(anchor)}"><h2>{_e(title)}</h2>\n{content}\n</section>'

    def importances(self, ranked: list[FrozenTrial]) -> str:
        if len(ranked) < 2:
            return _note(f"needs at least 2 complete trials ({len(ranked)} so far)")
        try:
            # Optuna's default (PED-ANOVA) is deterministic and needs no scikit-learn, unlike fANOVA.
            fig = vis.plot_param_importances(self.study, target_name=TARGET)
        except (RuntimeError, ValueError) as err:  # e.g. every complete trial has the same params
            return _note(f"cannot compute importances: {err}")
        hint = ""
        if len(ranked) < 10:
            hint = f'<p class="hint">Only {len(ranked)} complete trials: treat these importances as rough.</p>'
        return hint + self.plot(fig, "", height=max(350, 28 * len(ranked[0].params) + 120))

    def slices(self, ranked: list[FrozenTrial]) -> str:
        if not ranked:
            return _note("no complete trial yet")
        # One small figure per parameter: Optuna's single plot puts all 15 in one unreadable row.
        cells = []
        for name in sorted(ranked[0].params):
            fig = vis.plot_slice(self.study, params=[name], target_name=TARGET)
            fig.update_layout(title=name, showlegend=False, width=None)
            # Viridis: Optuna's default white-to-blue scale draws the first trials almost invisibly.
            fig.update_traces(marker={"showscale": False, "colorscale": "Viridis"}, selector={"type": "scatter"})
            cells.append(f"<div>{self.plot(fig, '', height=300, keep_title=True)}</div>")
        return '<p class="hint">Colour: trial number (purple is early, yellow is late).</p><div class="grid">' + "".join(cells) + "</div>"

    def best_trial(self, best: FrozenTrial | None) -> str:
        if best is None:
            return _note("no complete trial yet")
        a = best.user_attrs
        facts = (
            f"Trial {best.number}: {TARGET} {best.value:.4f} at epoch {a.get(K.BEST_EPOCH, '?')} of {a.get(K.EPOCHS_RUN, '?')}; "
            f"{a.get(K.N_PARAMS, 0):,} parameters; {a.get(K.SECONDS, 0):.0f} s on {a.get(K.DEVICE, '?')}."
        )
        params = ", ".join(f"{k}={fmt(v)}" for k, v in best.params.items())
        parts = [f"<p>{_e(facts)}</p><p class='params'>{_e(params)}</p>"]
        fig = history_figure(best)
        parts.append(self.plot(fig, "no per-epoch history recorded"))
        metas = optuna.artifacts.get_all_artifact_meta(best, storage=self.study._storage)
        for meta in metas:
            if meta.filename.lower().endswith(".png"):
                parts.append(self.picture(meta, f"trial {best.number}: validation predictions ({meta.filename})"))
        return "\n".join(parts)

    def edges(self, ranked: list[FrozenTrial]) -> str:
        if len(ranked) < MIN_TOP:
            return _note(f"needs at least {MIN_TOP} complete trials to judge ({len(ranked)} so far)")
        warnings = edge_warnings(self.study)
        if not warnings:
            return _note("no parameter of the best trials sits at an edge of its searched range")
        items = "".join(f"<li>{_e(w)}</li>" for w in warnings)
        return f'<ul class="warnings">{items}</ul>'

    def evaluation(self) -> str:
        ev = Evaluation.of_study(self.study)
        if ev is None:
            return _note(f"not evaluated yet: run `{st.sweep_command('best --evaluate', self.storage_url, self.study.study_name)}`")
        volumes = f" slices of {ev.volumes['n_volumes']} volumes" if ev.volumes else " images"
        n_images = "?" if ev.n_test_images is None else ev.n_test_images
        text = f"Trial {ev.trial} retrained with seeds {ev.seeds} and evaluated on {n_images} test{volumes}."
        test = ev.test
        if test:
            keys = [*rec.DICE_KEYS, "dice_fg", "dice_mean4"]
            head = "".join(f"<th>{_e(k[5:])}</th>" for k in keys)
            cells = "".join(f"<td>{test[k]:.4f}</td>" for k in keys)
            spread = f" ± {test['dice_fg_std']:.4f} over {len(ev.seeds)} seeds" if len(ev.seeds or []) > 1 else ""
            table = f'<table class="top"><tr><th></th>{head}</tr><tr><th>test Dice</th>{cells}</tr></table>'
            parts = [f"<p>{_e(text)} Test dice_fg {test['dice_fg']:.4f}{_e(spread)}.</p>{table}"]
        else:
            parts = [f"<p>{_e(text)} The test split has no masks, so there is no test Dice; predicted masks are in the --out folder.</p>"]
        if ev.volumes:
            parts.append(volume_tables(ev.volumes))
        overlays = [m for m in optuna.artifacts.get_all_artifact_meta(self.study) if m.filename == TEST_OVERLAY]
        if overlays:  # each evaluation uploads one; the last belongs to the recorded evaluation
            parts.append(self.picture(overlays[-1], "test predictions"))
        return "\n".join(parts)

    def picture(self, meta, caption: str) -> str:
        try:
            with self.store.open_reader(meta.artifact_id) as f:
                data = base64.b64encode(f.read()).decode("ascii")
        except optuna.artifacts.exceptions.ArtifactNotFound:  # the folder deleted or moved: the page goes without it
            return _note(f"{meta.filename}: not in the artifact location {self.location} (moved or deleted?)")
        except Exception as err:  # noqa: BLE001 - a store that is down must not break the report
            return _note(f"{meta.filename}: artifact not readable ({err})")
        return (f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{_e(caption)}</figcaption></figure>")


def header(s: optuna.Study, storage_url: str, ranked: list[FrozenTrial]) -> str:
    """The title, the study's facts and the synthetic-data badge."""
    attrs = s.user_attrs
    trials = s.get_trials(deepcopy=False)
    # An interrupted trial and its retries are one trial here, as in `status`.
    chains = rec.chain_counts(trials)
    states = rec.states_line(rec.state_counts(trials), chains, running=True) if trials else "no trials"
    rows = [
        ("study", f"{s.study_name} in {st.display_url(storage_url)}"),
        ("data", attrs.get(StudyKey.DATA_DESCRIPTION) or attrs.get(StudyKey.DATA_SOURCE) or "not recorded"),
        ("trials", f"{len(rec.retry_chains(trials))} ({states}); epoch budget {attrs.get(StudyKey.EPOCHS, '?')}"),
        ("search space", "local: the enqueued default's neighbourhood (run --space local)"
         if (attrs.get(StudyKey.SPACE) or {}).get("name") == "local" else "full"),
        ("best", f"trial {ranked[0].number}: {TARGET} {ranked[0].value:.4f}" if ranked else "no complete trial yet"),
        ("selection", f"{attrs[StudyKey.CV]}-fold cross-validation over train+val (values are mean fold dice_fg)"
         if attrs.get(StudyKey.CV) else "on the val split"),
        ("versions", ", ".join(f"{k} {v}" for k, v in attrs.get(StudyKey.VERSIONS, {}).items())),
        ("generated", datetime.now().isoformat(timespec="seconds")),
    ]
    badge = ""
    if attrs.get(StudyKey.SYNTHETIC):
        badge = '<p class="badge">Synthetic data: the built-in phantom, not real MR images.</p>'
    table = "".join(f"<tr><th>{_e(k)}</th><td>{_e(str(v))}</td></tr>" for k, v in rows)
    return f'<h1>{_e("Sweep report: study " + s.study_name)}</h1>\n{badge}<table class="meta">{table}</table>'

def search_gained(study: optuna.Study) -> str:
    """docs/FORMATS.md's ``"search"``: the latest evaluation's (with its held-out gain), else the study's on val."""
    evaluation = rec.Evaluation.of_study(study)
    search = (evaluation and evaluation.search) or rec.search_gain(study)
    return f"<p>{_e(rec.search_line(search))}.</p>"


def against_original(study: optuna.Study, best: FrozenTrial | None) -> str:
    """The best trial beside the original coursework configuration, when the study ran it."""
    original = original_trials(study)
    if not original:
        return _note("this study has no trial with the original configuration: start a study with "
                     "`--enqueue original` to measure the sweep against it")
    done = [t for t in original if t.state == TrialState.COMPLETE]
    if not done:
        states = ", ".join(f"trial {t.number} {t.state.name.lower()}" for t in original)
        return _note(f"the original configuration did not complete ({states})")
    orig = max(done, key=lambda t: t.value)
    if best is None:
        return _note("no complete trial yet")
    keys = ["value", *CLASS_NAMES, "mean4"]

    def scores(t: FrozenTrial) -> list[float | None]:
        a = t.user_attrs
        return [t.value, *(a.get(f"dice_{c}") for c in CLASS_NAMES), a.get("dice_mean4")]

    def cells(values, signed: bool = False) -> str:
        return "".join(f"<td>{'–' if v is None else f'{v:+.4f}' if signed else f'{v:.4f}'}</td>" for v in values)

    head = "".join(f"<th>{_e(TARGET if k == 'value' else k)}</th>" for k in keys) + "<th>parameters</th><th>seconds</th>"
    rows = []
    for label, t in ((f"original configuration (trial {orig.number})", orig), (f"best (trial {best.number})", best)):
        a = t.user_attrs
        rows.append(f"<tr><th>{_e(label)}</th>{cells(scores(t))}<td>{a.get(K.N_PARAMS, 0):,}</td>"
                    f"<td>{a.get(K.SECONDS, 0):.0f}</td></tr>")
    diff = [None if a is None or b is None else b - a for a, b in zip(scores(orig), scores(best))]
    rows.append(f"<tr><th>difference</th>{cells(diff, signed=True)}<td></td><td></td></tr>")
    return (f'<p class="hint">Same epoch budget and checkpoint rule; both selected and scored the same way.</p>'
            f'<table class="top"><tr><th></th>{head}</tr>{"".join(rows)}</table>')

def top_table(ranked: list[FrozenTrial]) -> str:
    if not ranked:
        return _note("no complete trial yet")
    rows = []
    for t in ranked[:TOP_TRIALS]:
        a = t.user_attrs
        row = {"trial": t.number, TARGET: t.value}
        row.update({c: a.get(f"dice_{c}") for c in CLASS_NAMES})
        row.update({"mean4": a.get("dice_mean4"), "best epoch": a.get(K.BEST_EPOCH), "epochs": a.get(K.EPOCHS_RUN),
                    "seconds": a.get(K.SECONDS), "n params": a.get(K.N_PARAMS)})
        row.update({k: fmt(v) for k, v in t.params.items()})
        rows.append(row)
    frame = pd.DataFrame(rows)
    dice_cols = [TARGET, *CLASS_NAMES, "mean4"]
    frame[dice_cols] = frame[dice_cols].map(lambda v: "–" if v is None or pd.isna(v) else f"{v:.4f}")
    frame["n params"] = frame["n params"].map(lambda v: f"{int(v):,}" if pd.notna(v) else "–")
    table = frame.to_html(index=False, classes="top", border=0, na_rep="–", escape=True)
    return (f'<p class="hint">Per-class Dice on validation at each trial\'s best epoch, then the trial\'s '
            f'hyperparameters.</p><div class="scroll">{table}</div>')

def reproduce(study: optuna.Study, storage_url: str) -> str:
    """The commands that rerun the study and its evaluation (no password in a URL)."""
    run = study.user_attrs.get(StudyKey.COMMAND, "python -m sweep run  # (command not recorded)")
    run = run.replace(storage_url, st.display_url(storage_url))  # a report is shared: no password in it
    ev = Evaluation.of_study(study) or Evaluation()
    if ev.command:  # recorded from the evaluation's own options: every flag that changed its result
        return f"<pre>{_e(run)}\n{_e(ev.command)}</pre>"
    flags = []  # an evaluation recorded before its command was: what it recorded
    if ev.seeds is not None:
        flags += ["--seeds", str(len(ev.seeds))]
    if ev.out:
        flags += ["--out", ev.out]
    best = st.sweep_command("best --evaluate", storage_url, study.study_name, after=tuple(flags))
    return f"<pre>{_e(run)}\n{_e(best)}</pre>"


VOLUME_METRICS = (("dice", "Dice", 3), ("hd95", "HD95 mm", 1), ("assd", "ASSD mm", 1))


def _summary_rows(figures: dict, prefix: str, phases: tuple[str, ...] | None = None) -> list[str]:
    """Table rows of one ``summary`` (per phase) with its ``dice_fg``, each labelled ``prefix + phase``."""
    rows = []
    for phase, m in (figures.get("summary") or {}).items():
        if phases is not None and phase not in phases:
            continue
        fg = (figures.get("dice_fg") or {}).get(phase)
        cells = f"<td>{fg[0]:.3f} ± {fg[1]:.3f}</td>" if fg else "<td>–</td>"
        cells += "".join(f"<td>{m[f'{key}_{s}'][0]:.{d}f} ± {m[f'{key}_{s}'][1]:.{d}f}</td>"
                         for key, _, d in VOLUME_METRICS for s in ("rv", "myo", "lv"))
        rows.append(f"<tr><th>{_e(prefix + phase)}</th>{cells}</tr>")
    return rows


def volume_tables(volumes: dict) -> str:
    """Per-patient 3-D evaluation: mean ± std by phase, clinical indices, and every test volume."""
    head = "<th>Dice fg</th>" + "".join(f"<th>{_e(label)} {s}</th>" for _, label, _ in VOLUME_METRICS for s in ("RV", "Myo", "LV"))
    rows = _summary_rows(volumes, "")
    for group, figures in (volumes.get("groups") or {}).items():
        rows += _summary_rows(figures, f"{group} ({figures['n']}) ", phases=("ED", "ES"))
    by_group = " and per pathology group" if volumes.get("groups") else ""
    parts = [(f'<p class="hint">Per test volume on its original grid with its voxel spacing (mean ± std over '
              f'{len(volumes.get("cases") or [])} volumes{by_group}; Dice fg is the mean of RV, Myo and LV per volume).'
              f'</p><div class="scroll"><table class="top"><tr><th>phase</th>{head}</tr>{"".join(rows)}</table></div>')]
    clinical = volumes.get("clinical")
    if clinical:
        keys = list(clinical)
        shown = lambda v: "–" if v is None else f"{v:.3f}"
        cells = "".join(f"<tr><th>{_e(k)}</th><td>{shown(clinical[k]['r'])}</td><td>{shown(clinical[k]['bias'])}</td></tr>"
                        for k in keys)
        parts.append(f'<p class="hint">Clinical indices of {volumes.get("clinical_patients", "?")} patients against the ground truth '
                     f'(ml, %, g).</p><table class="top"><tr><th>index</th><th>Pearson r</th><th>mean bias</th></tr>{cells}</table>')
    if volumes.get("cases"):
        frame = pd.DataFrame(volumes["cases"])
        parts.append(f"<details><summary>every test volume</summary><div class=\"scroll\">"
                     f"{frame.to_html(index=False, classes='top', border=0, na_rep='–')}</div></details>")
    return "\n".join(parts)


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _e(text: str) -> str:
    return html.escape(text, quote=True)


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1250px;
        padding: 1rem 2rem 4rem; color: #222; }}
h1 {{ font-size: 1.6rem; }} h2 {{ font-size: 1.25rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2rem; }}
table {{ border-collapse: collapse; font-size: .85rem; }}
th, td {{ padding: .25rem .55rem; text-align: right; border-bottom: 1px solid #eee; white-space: nowrap; }}
table.meta th, table.meta td {{ text-align: left; white-space: normal; }}
table.top thead th, table.top tr:first-child th {{ background: #f4f4f4; }}
.scroll {{ overflow-x: auto; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(380px, 1fr)); gap: .5rem; }}
.note {{ color: #666; font-style: italic; }}
.hint {{ color: #666; font-size: .85rem; }}
.params {{ font-family: ui-monospace, monospace; font-size: .8rem; color: #444; }}
.badge {{ display: inline-block; background: #fff3cd; border: 1px solid #e0c36b; padding: .3rem .6rem; border-radius: 4px; }}
ul.warnings li {{ color: #8a4b00; margin: .3rem 0; }}
figure {{ margin: 1rem 0; }} figure img {{ max-width: 100%; border: 1px solid #ddd; }}
figcaption {{ color: #666; font-size: .85rem; }}
pre {{ background: #f6f6f6; padding: .7rem; overflow-x: auto; }}
</style></head>
<body>
{body}
</body></html>
"""
