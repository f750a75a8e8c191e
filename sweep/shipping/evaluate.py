"""`python -m sweep best --evaluate`: retrain the best trial, score it on unseen slices, write what ships.

In named steps: load the study's data and check it; retrain the best configuration once per
seed on the search's folds; choose the post-processing and estimate the figure to expect on
unseen slices; predict and score the test split; write masks, pictures, the summary and the
model file, and record the evaluation on the study.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import optuna
import torch
from tqdm.auto import tqdm

from data import (
    Dataset,
    assemble,
    load_dataset,
    read_truth,
    volume_spacing,
    write_labels_nifti,
    write_mask,
)
from data import preprocessing as volume_preprocessing
from data.files import output_file
from model import SegNetConfig
from sweep.core import artifacts, folders, interrupts
from sweep.core import records as rec
from sweep.core.best import BestOptions, describe_best, evaluate_command
from sweep.core.errors import UsageError, check_writable
from sweep.core.outputs import refuse_outputs
from sweep.training.folds import Selection, estimate_holdout, refit_without_holdout, selection_folds, without_holdout
from sweep.nn.metrics import (
    bootstrap_dice_fg,
    bootstrap_dice_fg_gain,
    dice_from_counts,
    dice_scores,
    per_image_counts,
)
from sweep.nn import threads
from sweep.nn.model_file import ModelBundle, current_versions, ensemble_probs, save_bundle
from sweep.nn.pictures import overlay_png
from sweep.nn.postprocess import (
    Probs,
    apply_postprocessing,
    choose_postprocessing,
    predict_probs,
)
from sweep.core.records import StudyKey
from sweep.search.space import configs_from_params
from sweep.nn.runtime import DeviceSplit, load_model, resolve_device_or_fail, use_bf16
from sweep.training.train import fit_final, fit_folds
from sweep.nn.volume_metrics import (
    case_dice_fg,
    case_metrics,
    fg_summary,
    group_summaries,
    clinical_agreement,
    clinical_indices,
    summarize_cases,
)


@dataclass
class Retraining:
    """One seed's retraining of one configuration: a model per fold, or its refit on every slice."""

    trial: int
    seed: int
    val_dice_fg: float  # mean fold dice_fg at the best epoch
    best_epoch: int
    model_config: SegNetConfig
    state_dicts: list[dict]  # what ships, on the CPU: one per fold, or the one refit model
    held_out: Probs  # (N_selection, C, H, W): each selection slice predicted by the fold that held it out
    test: Probs  # (N_test, C, H, W): the mean over what ships of this seed
    estimate: Probs | None = None  # (N_holdout, C, H, W): the held-out train slices, by the refit (fit) that left them out

    def summary(self) -> dict:
        return {"trial": self.trial, "seed": self.seed, rec.VAL_DICE_FG: self.val_dice_fg, "best_epoch": self.best_epoch}


def evaluate_best(study: optuna.Study, opts: BestOptions) -> dict:
    """Retrain the best trial from scratch ``opts.seeds`` times and evaluate it on the test split.

    Each seed's checkpoint is chosen on val (or the folds), as in the search. The written masks
    are the seeds' ensemble (mean probabilities); rotation TTA and largest-component cleaning
    are applied only where they raise the ensemble's held-out ``dice_fg``. With test masks:
    per-class Dice as mean and std over seeds, and the ensemble's Dice with a bootstrap 95 %
    interval over test images.
    """
    best = describe_best(study)
    candidates = top_trials(study, opts.top)
    if len(candidates) < opts.top:
        raise UsageError(f"--top {opts.top}: study {study.study_name!r} has only {len(candidates)} complete trial(s)")
    if opts.epochs is not None:  # a search at a lower budget, its picks trained longer to ship
        candidates = [{**c, "epochs": opts.epochs} for c in candidates]
    check_outputs(study, opts)  # now, not after minutes of retraining
    # The store the result is recorded in, likewise: one that is down is one line before any retraining.
    artifacts.check_recorded(study, artifacts.location_of(study, opts.storage, warn=False))
    data = load_checked_data(study, opts.data)
    device = resolve_device_or_fail(opts.device)
    threads.start(device)  # as run chooses them (sweep.nn.threads)
    selection = selection_folds(data, best["cv"], device, study.user_attrs.get(StudyKey.CV_FOLDS))
    refit = opts.refit and not best["cv"]  # fold models of a --cv study together saw every slice already
    held = None if best["cv"] else estimate_holdout(data, opts.holdout)
    fidelity = rec.Fidelity.of_study(study)
    runs = retrain(candidates, selection, data, opts, device, refit, held, fidelity)
    post = choose_postprocessing(Probs.mean([r.held_out for r in runs]), selection.masks)
    masks = apply_postprocessing(Probs.mean([r.test for r in runs]).of(post["tta"]), post)
    bundle = ModelBundle(
        members=[r.state_dicts for r in runs], model_config=runs[0].model_config.to_dict(), tta=post["tta"],
        largest_component=post["largest_component"], preprocessing=preprocessing_record(data), params=best["params"],
        data_fingerprint=data.fingerprint, study=study.study_name, trial=best["trial"], versions=current_versions(),
        group_configs=[r.model_config.to_dict() for r in runs] if len(candidates) > 1 else [],
    )
    result = {
        **{k: best[k] for k in ("study", "trial", "params", rec.VAL_DICE_FG, "val")},
        "selection": f"{best['cv']}-fold cross-validation over train+val" if best["cv"] else "val",
        "cv": best["cv"],
        "recipe": {"refit": refit, "top": len(candidates), "trials": [c["trial"] for c in candidates]},
        "training": {"epochs": [c["epochs"] for c in candidates], **fidelity.to_dict()},
        "seeds": sorted({r.seed for r in runs}),
        "test": score_test(runs, post, masks, data.test.masks),
        "n_test_images": len(data.test),
        "postprocess": post,
        "estimate": held_out_estimate(runs, post, selection, best["cv"], refit, data, held),
        "runs": [r.summary() for r in runs],
        "data": data.describe(),
        "synthetic_data": data.synthetic,
        "out": opts.out,
        "command": evaluate_command(opts),
    }
    result["search"] = search_gain(study, best["search"], candidates, result["estimate"], runs, post,
                                   (selection, data, opts, device, held, rec.Fidelity.of_study(study)))
    ship(study, result, data, masks, bundle, opts)
    return result


def ship(study: optuna.Study, result: dict, data: Dataset, masks: np.ndarray, bundle: ModelBundle,
         opts: BestOptions) -> None:
    """Write the evaluation into a new folder beside ``--out``, swap it in whole and record it on the
    study: an interrupted run leaves the old evaluation, folder and record, never a mix."""
    target = Path(opts.out).resolve()
    with folders.building(target) as stage:
        if data.volumes:
            result["volumes"] = evaluate_volumes(data, masks, stage / "masks")
        files = write_outputs(result, data, masks, stage, bundle, target)
        with interrupts.held():  # the folder and the study's record change together, or neither
            folders.swap_in(stage, target)
            record_evaluation(study, result, [target / f.relative_to(stage) for f in files],
                              artifacts.open_store(artifacts.location_of(study, opts.storage)))


def load_checked_data(study: optuna.Study, source: str | None) -> Dataset:
    """The study's data (or ``--data``), refused if its train/val are not what the study was tuned on."""
    source = source or study.user_attrs.get(StudyKey.DATA_SOURCE)
    if source is None:
        raise UsageError(f"--study {study.study_name!r}: records no data source; pass --data")
    data = load_dataset(source, groups=study.user_attrs.get(StudyKey.GROUPS))
    recorded = study.user_attrs.get(StudyKey.DATA_FINGERPRINT)
    if recorded is not None and recorded != data.fingerprint:
        raise UsageError(f"--data {source}: not the train/val data study {study.study_name!r} was tuned on")
    return data


def top_trials(study: optuna.Study, k: int) -> list[dict]:
    """The ``k`` best complete trials, best first, as ``describe_best`` describes the best."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    ranked = sorted(complete, key=lambda t: t.value, reverse=True)[:k]
    return [candidate(study, t) for t in ranked]


def candidate(study: optuna.Study, t: optuna.trial.FrozenTrial) -> dict:
    """A trial as ``retrain`` takes it: number, params (an enqueued trial's before it ran too), epoch
    budget and its retry chain's root."""
    epochs = t.user_attrs.get(rec.TrialKey.EPOCH_BUDGET, study.user_attrs.get(StudyKey.EPOCHS))
    params = t.params or t.system_attrs.get(rec.ENQUEUED, {})
    return {"trial": t.number, "params": params, "epochs": epochs, "root": rec.root_trial_number(t)}


def retrain(candidates: list[dict], selection: Selection, data: Dataset, opts: BestOptions, device: torch.device,
            refit: bool, held: np.ndarray | None = None, fidelity: rec.Fidelity | None = None) -> list[Retraining]:
    """Train each candidate configuration once per seed (on every fold), predict the held-out
    slices, and (``refit``) retrain it on every labelled slice for its best epoch count.

    With ``held`` (train indices, val selection only), these fits leave those slices out; what
    ships then trains with them: the refit, or without ``refit`` one more fit on all of train,
    checkpoint on val as in the search. The held-out slices are predicted by what ships, minus
    them: with ``refit`` a refit of its own on the rest of train + val for the same epochs
    (``estimate_refit``), else the fit that left them out. ``fidelity`` is the study's epoch cost
    (``records.Fidelity.of_study``), so that an epoch here is one of the search's.
    """
    fidelity = fidelity or rec.Fidelity()
    bf16 = use_bf16(device)
    test_images = torch.as_tensor(data.test.images, device=device).unsqueeze(1)
    everything = DeviceSplit.from_arrays(np.concatenate([data.train.images, data.val.images]),
                                         np.concatenate([data.train.masks, data.val.masks]), device)
    twins, hold = (selection, None) if held is None else without_holdout(selection, data, held, device)
    pool = refit_without_holdout(data, held, device) if refit and held is not None else None
    fits = 1 + (refit or held is not None) + (pool is not None)
    budget = sum(c["epochs"] for c in candidates) * opts.seeds * fits
    runs = []
    with tqdm(total=budget, desc="retrain best", unit="epoch", disable=not opts.progress, file=sys.stderr) as bar:
        def tick(epoch: int, record: dict) -> None:
            bar.update(1)

        for cand in candidates:
            model_cfg, train_cfg = _configs(cand, fidelity)
            for seed in range(opts.seeds):
                bar.set_postfix(trial=cand["trial"], seed=seed)
                fit, models, held_out, estimate = _twin_fit(model_cfg, train_cfg, twins, hold, seed, tick, fidelity, device)
                if pool is not None:
                    bar.total -= cand["epochs"] - fit.best_epoch
                    estimate = estimate_refit(model_cfg, replace(train_cfg, epochs=fit.best_epoch), pool, hold, seed,
                                              tick, device)
                shipped = fit.state_dicts
                if refit:
                    bar.total -= cand["epochs"] - fit.best_epoch  # the refit runs to the best epoch only
                    shipped = [fit_final(model_cfg, replace(train_cfg, epochs=fit.best_epoch), everything, seed=seed,
                                         on_epoch=tick)]
                elif hold is not None:
                    shipped = fit_folds(model_cfg, train_cfg, selection.folds, seed=seed, on_epoch=tick,
                                        val_slices=fidelity.val_slices).state_dicts
                if shipped is not fit.state_dicts:
                    models = [load_model(model_cfg, state, device) for state in shipped]
                test = Probs(*(ensemble_probs([models], test_images, bf16, tta) for tta in (False, True)))
                runs.append(Retraining(cand["trial"], seed, fit.best_value, fit.best_epoch, model_cfg, shipped,
                                       held_out, test, estimate))
    return runs


def _configs(cand: dict, fidelity: rec.Fidelity) -> tuple[SegNetConfig, object]:
    """A candidate's configs, an epoch costing what one of the search's did."""
    model_cfg, train_cfg = configs_from_params(cand["params"], cand["epochs"])
    return model_cfg, replace(train_cfg, epoch_slices=fidelity.epoch_slices, patch=fidelity.patch)


def search_gain(study: optuna.Study, search: dict, candidates: list[dict], estimate: dict, runs: list[Retraining],
                post: dict, context: tuple) -> dict:
    """docs/FORMATS.md's ``"search"`` with ``gain_estimate``: the shipped recipe against the enqueued default
    on the estimate's held-out slices (None without a default or a held-out estimate).

    Where what ships is not the default alone, the default is trained as the estimate's twins were
    (same held-out patients, seeds, epochs and epoch cost; its post-processing chosen on val, as the
    best's) and both are scored on the same volumes (slices, without volumes): the gain is the mean
    paired difference, its interval a paired bootstrap over patients (slices). A default that was
    pruned or never ran is trained all the same: the gain is over what it would have shipped. Cost:
    the default's epochs once per seed, what the estimate's own twin of each seed costs.
    """
    selection, data, opts, device, held, fidelity = context
    if search["default_trial"] is None:
        return search
    shipped_default = {c["root"] for c in candidates} == {search["default_trial"]}
    search = {**search, "best_is_default": shipped_default}
    if held is None:
        return search
    if shipped_default:  # the same model: no gain to measure, and no interval around it
        figure = held_out_figure(estimate, data)
        return {**search, "default_estimate_dice_fg": figure, "best_estimate_dice_fg": figure,
                "gain_estimate": 0.0, "gain_estimate_ci95": None}
    default = candidate(study, rec.default_chain(study.get_trials(deepcopy=False))[-1])
    if opts.epochs is not None:
        default["epochs"] = opts.epochs
    on_selection, on_held = default_twins(default, selection, data, opts, device, held, fidelity)
    default_post = choose_postprocessing(on_selection, selection.masks)
    gain, ci, ours, theirs = paired_gain(estimate, data, held, (Probs.mean([r.estimate for r in runs]), post),
                                         (on_held, default_post))
    return {**search, "default_estimate_dice_fg": theirs, "best_estimate_dice_fg": ours,
            "gain_estimate": gain, "gain_estimate_ci95": ci}


def held_out_figure(estimate: dict, data: Dataset) -> float:
    """The held-out figure the gain is measured in: mean foreground Dice per volume on volume data
    (``estimate["volumes"]``), else the stack Dice of the held-out slices."""
    if data.volumes:
        return round(float(np.mean([c["dice_fg"] for c in estimate["volumes"]["cases"]])), 5)
    return estimate["dice_fg"]


def default_twins(default: dict, selection: Selection, data: Dataset, opts: BestOptions, device: torch.device,
                  held: np.ndarray, fidelity: rec.Fidelity) -> tuple[Probs, Probs]:
    """The default's estimate twins, one per seed: their ensemble's predictions of the selection and held-out slices."""
    twins, hold = without_holdout(selection, data, held, device)
    pool = refit_without_holdout(data, held, device) if opts.refit else None
    model_cfg, train_cfg = _configs(default, fidelity)
    total = default["epochs"] * opts.seeds * (2 if pool is not None else 1)
    on_selection, on_held = [], []
    with tqdm(total=total, desc="retrain default", unit="epoch", disable=not opts.progress, file=sys.stderr) as bar:
        def tick(epoch: int, record: dict) -> None:
            bar.update(1)

        for seed in range(opts.seeds):
            fit, _, selected, estimate = _twin_fit(model_cfg, train_cfg, twins, hold, seed, tick, fidelity, device)
            if pool is not None:
                bar.total -= default["epochs"] - fit.best_epoch
                estimate = estimate_refit(model_cfg, replace(train_cfg, epochs=fit.best_epoch), pool, hold, seed,
                                          tick, device)
            on_selection.append(selected)
            on_held.append(estimate)
    return Probs.mean(on_selection), Probs.mean(on_held)


def paired_gain(estimate: dict, data: Dataset, held: np.ndarray, ours: tuple[Probs, dict],
                base: tuple[Probs, dict]) -> tuple[float, list[float], float, float]:
    """Held-out ``dice_fg`` of ``ours`` minus ``base`` (each: probabilities of the held-out slices and
    their post-processing), its paired 95 % bootstrap interval, and the two figures: per volume over
    patients on volume data (``estimate["volumes"]`` holds ours), else stack Dice over slices."""
    if data.volumes:
        theirs = {c["case"]: c["dice_fg"] for c in volume_estimate(data, held, *base)["cases"]}
        cases = estimate["volumes"]["cases"]
        diffs = [(c["patient"], c["dice_fg"] - theirs[c["case"]]) for c in cases]
        base_figure = round(float(np.mean([theirs[c["case"]] for c in cases])), 5)
        return (round(float(np.mean([d for _, d in diffs])), 5), patient_bootstrap(diffs),
                held_out_figure(estimate, data), base_figure)
    truth = torch.as_tensor(data.train.masks[held])
    a, b = (per_image_counts(torch.as_tensor(apply_postprocessing(p.of(post["tta"]), post)), truth) for p, post in (ours, base))
    mine, theirs = dice_from_counts(a.sum(0))["dice_fg"], dice_from_counts(b.sum(0))["dice_fg"]
    return round(mine - theirs, 5), [round(x, 5) for x in bootstrap_dice_fg_gain(a, b)], round(mine, 5), round(theirs, 5)


def _twin_fit(model_cfg: SegNetConfig, train_cfg, twins: Selection, hold, seed: int, tick, fidelity: rec.Fidelity,
              device: torch.device):
    """One seed's fit on the selection's folds (without the estimate's held-out slices where ``hold``):
    the fit, its models, their predictions of the selection slices and of ``hold`` (None without)."""
    bf16 = use_bf16(device)
    fit = fit_folds(model_cfg, train_cfg, twins.folds, seed=seed, on_epoch=tick, val_slices=fidelity.val_slices)
    models = [load_model(model_cfg, state, device) for state in fit.state_dicts]
    estimate = None if hold is None else _probs(models[0], hold.images, bf16)
    return fit, models, _held_out_probs(models, twins, bf16), estimate


def estimate_refit(model_cfg: SegNetConfig, train_cfg, pool: DeviceSplit, hold: DeviceSplit, seed: int, tick,
                   device: torch.device) -> Probs:
    """The shipped refit's twin: trained as it is (``train_cfg.epochs``, the twin fit's best epoch,
    nothing held out) on train + val without the estimate's patients; its predictions of them."""
    state = fit_final(model_cfg, train_cfg, pool, seed=seed, on_epoch=tick)
    return _probs(load_model(model_cfg, state, device), hold.images, use_bf16(device))


def _probs(model, images: torch.Tensor, bf16: bool) -> Probs:
    return Probs(predict_probs(model, images, bf16, False).cpu(), predict_probs(model, images, bf16, True).cpu())


def _held_out_probs(models: list, selection: Selection, bf16: bool) -> Probs:
    """Each selection slice predicted by the model of the fold that held it out."""
    shape = (len(selection.masks), 4, *selection.masks.shape[1:])
    out = Probs(torch.zeros(shape), torch.zeros(shape))
    for model, (_, held), idx in zip(models, selection.folds, selection.held_out):
        out.plain[torch.as_tensor(idx)] = predict_probs(model, held.images, bf16, False).cpu()
        out.tta[torch.as_tensor(idx)] = predict_probs(model, held.images, bf16, True).cpu()
    return out


def score_test(runs: list[Retraining], post: dict, ensemble: np.ndarray, truth: np.ndarray | None) -> dict | None:
    """Test Dice per seed (mean and std) and of the written ensemble masks (with a bootstrap interval)."""
    if truth is None:
        return None
    truth_t = torch.as_tensor(truth)
    per_seed = [dice_scores(torch.as_tensor(apply_postprocessing(r.test.of(post["tta"]), post)), truth_t) for r in runs]
    test = aggregate_test(per_seed, len(truth))
    counts = per_image_counts(torch.as_tensor(ensemble), truth_t)
    test["ensemble"] = {k: round(v, 5) for k, v in dice_from_counts(counts.sum(0)).items()}
    test["ensemble"]["dice_fg_ci95"] = [round(x, 5) for x in bootstrap_dice_fg(counts)]
    return test


def held_out_estimate(runs: list[Retraining], post: dict, selection: Selection, cv: int, refit: bool = False,
                      data: Dataset | None = None, held: np.ndarray | None = None) -> dict:
    """What to expect on unseen slices: the written masks' recipe scored on slices it never trained on.

    With ``held`` (the default for a val study), the slices are train patients that the
    recipe's retrainings left out: neither training nor selection (val) saw them, so the figure
    is honest. With ``refit`` they are predicted by a refit trained as the shipped one is, on
    train + val less their patients; it describes models trained on fewer slices than the
    shipped ones, so if anything it leans low. Without it: the val split, or with ``--cv`` the out-of-fold predictions of all
    train+val slices; these also selected the configuration (and the post-processing), so that
    figure leans optimistic. ``val_dice_fg`` is the same recipe on the selection slices, for
    comparison. The interval is a 95 % bootstrap over slices.
    """
    on_selection = _scores(Probs.mean([r.held_out for r in runs]), selection.masks, post)
    if held is not None:
        scores = _scores(Probs.mean([r.estimate for r in runs]), data.train.masks[held], post)
        patients = len(set(np.asarray(data.train.groups)[held]))
        source = (f"{len(held)} train slices ({patients} patients) held out of the retrainings it scores; "
                  "the search selected on val")
        if refit:
            rest = len(set(data.train.groups) | set(data.val.groups)) - patients
            source += (f"; predicted by a refit on the other {rest} train + val patients for the shipped refit's "
                       "epochs (the shipped refit trained on them too)")
        out = {"source": source, "n_images": len(held), **scores, rec.VAL_DICE_FG: on_selection["dice_fg"]}
        if data.volumes:
            out["volumes"] = volume_estimate(data, held, Probs.mean([r.estimate for r in runs]), post)
        return out
    masks = selection.masks
    source = f"out-of-fold predictions of the {len(masks)} train+val slices ({cv} folds)" if cv else f"the {len(masks)} val slices"
    source += ", which also selected the configuration: optimistic"
    if refit:  # the shipped models also trained on val: scored here are their twins trained without it
        source += "; predicted by the same recipe trained without them (the shipped refit saw them too)"
    return {"source": source, "n_images": len(masks), **on_selection, rec.VAL_DICE_FG: on_selection["dice_fg"]}


def volume_estimate(data: Dataset, held: np.ndarray, probs: Probs, post: dict) -> dict:
    """The estimate as the test split is scored on volumes: each held-out train volume's slices
    stacked back onto its source grid and scored against its own label file (``case_metrics``);
    ``dice_fg`` per phase and over all volumes (mean, std), with a 95 % bootstrap interval of the
    mean over patients (a patient's ED and ES volumes are resampled together)."""
    pred = apply_postprocessing(probs.of(post["tta"]), post)
    row_of = {int(i): row for row, i in enumerate(held)}
    cases = []
    for case, idx in data.train.case_indices().items():
        if not all(int(i) in row_of for i in idx):
            continue
        volume = data.volumes[case]
        labels = assemble(volume, pred[[row_of[int(i)] for i in idx]])
        scores = case_metrics(labels, read_truth(volume), volume_spacing(volume))
        row = {"case": case, "patient": volume.patient, "phase": volume.phase, **scores}
        cases.append({**row, "dice_fg": case_dice_fg(row)})
    out = {"n_volumes": len(cases), "dice_fg": fg_summary(cases), "summary": summarize_cases(cases)}
    out["dice_fg_ci95"] = patient_bootstrap([(c["patient"], c["dice_fg"]) for c in cases])
    out["cases"] = [{k: c[k] for k in ("case", "patient", "phase", "dice_fg", "dice_rv", "dice_myo", "dice_lv")} for c in cases]
    return out


def patient_bootstrap(values: list[tuple[str, float]], n_boot: int = 2000, seed: int = 0) -> list[float]:
    """95 % percentile interval of the mean of ``values`` when patients are resampled with replacement."""
    patients = sorted({p for p, _ in values})
    by_patient = [[v for p, v in values if p == name] for name in patients]
    rng = np.random.default_rng(seed)
    sums = np.array([sum(v) for v in by_patient])
    counts = np.array([len(v) for v in by_patient])
    idx = rng.integers(0, len(patients), size=(n_boot, len(patients)))
    means = sums[idx].sum(1) / counts[idx].sum(1)
    return [round(float(np.quantile(means, 0.025)), 5), round(float(np.quantile(means, 0.975)), 5)]


def _scores(probs: Probs, masks: np.ndarray, post: dict) -> dict:
    pred = apply_postprocessing(probs.of(post["tta"]), post)
    counts = per_image_counts(torch.as_tensor(pred), torch.as_tensor(masks))
    scores = {k: round(v, 5) for k, v in dice_from_counts(counts.sum(0)).items()}
    scores["dice_fg_ci95"] = [round(x, 5) for x in bootstrap_dice_fg(counts)]
    return scores


def aggregate_test(per_seed: list[dict], n_images: int) -> dict:
    """Mean over seeds of each Dice, with its spread over seeds (``*_std``)."""
    keys = [*rec.DICE_KEYS, "dice_fg", "dice_mean4"]
    out: dict = {"n_images": n_images}
    for key in keys:
        values = np.array([r[key] for r in per_seed])
        out[key] = round(float(values.mean()), 5)
        out[f"{key}_std"] = round(float(values.std(ddof=1)) if len(values) > 1 else 0.0, 5)
    return out


def preprocessing_record(data: Dataset) -> dict:
    """How the model's inputs were made, for model.pt: the volume preprocessing, or plain slices."""
    if data.volumes:
        return volume_preprocessing()
    return {"kind": "slices", "image_size": list(data.image_shape),
            "intensity": "grey PNG scaled to [0, 1], then each slice to zero mean and unit variance"}


def write_outputs(result: dict, data: Dataset, masks: np.ndarray, out: Path, bundle: ModelBundle,
                  final: Path | None = None) -> list[Path]:
    """Test masks (PNG per slice, or NIfTI per volume), the test picture, summary.json and model.pt
    under ``out``, which becomes ``final`` (default: ``out``) once complete (``summary.json`` names
    the files there); returns the files written."""
    final = out if final is None else final
    mask_dir = out / "masks"
    mask_dir.mkdir(parents=True, exist_ok=True)
    if not data.volumes:  # volume data: evaluate_volumes wrote one NIfTI per test volume
        for name, mask in zip(data.test.names, masks):
            write_mask(mask_dir / f"{name}_mask.png", mask)
    result["masks"] = str((final / "masks").resolve())
    model_path = save_bundle(bundle, out / rec.MODEL_FILE)
    result["model"] = str((final / rec.MODEL_FILE).resolve())
    overlay_path = out / rec.TEST_OVERLAY
    overlay_png(data.test.images, data.test.masks, masks, overlay_path)
    summary_path = out / rec.SUMMARY_FILE
    with output_file(summary_path) as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    return [summary_path, overlay_path, model_path]


def check_outputs(study: optuna.Study, opts: BestOptions) -> None:
    """``--out`` can be written, and its files replace neither the study nor the data."""
    out = Path(opts.out)
    written = [out / name for name in (rec.SUMMARY_FILE, rec.MODEL_FILE, rec.TEST_OVERLAY)]
    refuse_outputs(f"--out {opts.out}", [out, out / "masks", *written], storage=opts.storage, study=study, data=opts.data)
    refuse_foreign(out, opts.out)
    check_writable(out.resolve().parent, f"--out {opts.out}")  # the new folder is built there, then swapped in


def refuse_foreign(out: Path, flag_value: str) -> None:
    """``--out`` is replaced whole: refuse a folder that holds anything a previous evaluation did not write."""
    target = out.resolve()
    folders.recover(target)  # a run killed while swapping its folder in: the old evaluation back first
    if target.exists() and not target.is_dir():
        raise UsageError(f"--out {flag_value}: {target} is a file, expected a folder")
    foreign = folders.foreign_entries(target, ("masks", rec.SUMMARY_FILE, rec.MODEL_FILE, rec.TEST_OVERLAY),
                                      rec.SUMMARY_FILE)
    masks = target / "masks"
    if not foreign and masks.is_dir():
        foreign = [f"masks/{p.name}" for p in sorted(masks.iterdir())
                   if not p.name.endswith(("_mask.png", ".nii.gz")) and not p.name.startswith(".partial-")]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise UsageError(f"--out {flag_value}: holds {shown}, which no evaluation wrote; an evaluation replaces "
                         "its folder whole: choose another --out or move them")


def record_evaluation(study: optuna.Study, result: dict, files: list[Path], store) -> None:
    """The evaluation goes on the study (attribute and artifacts), never into a trial."""
    # With per-patient figures on volume data: a few kB even for ACDC's 100 test volumes.
    study.set_user_attr(StudyKey.EVALUATION, rec.Evaluation.of_summary(result).to_dict())
    for path in files:
        optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=study)


def evaluate_volumes(data: Dataset, masks: np.ndarray, mask_dir: Path) -> dict:
    """Stack the test split's predicted slices back into each volume on its original grid, write
    ``CASE.nii.gz`` with the source's geometry, and score every volume that has a ground truth.

    Returns ``{"cases": [...], "summary": {ED, ES, all}, "dice_fg": {ED, ES, all}, "groups": {...},
    "clinical": {...}}`` (``groups`` per pathology group where the data names them; clinical indices
    and ``clinical_patients`` only where patients have both an ED and an ES volume with ground
    truth, as in ACDC).
    """
    mask_dir.mkdir(parents=True, exist_ok=True)
    cases, predicted, truths = [], {}, {}
    by_case = data.test.case_indices()
    for case, idx in by_case.items():
        volume = data.volumes[case]
        labels = assemble(volume, masks[idx])
        write_labels_nifti(mask_dir / f"{case}.nii.gz", labels, volume)
        truth = read_truth(volume)
        if truth is None:
            continue
        predicted[case], truths[case] = labels, truth
        scores = case_metrics(labels, truth, volume_spacing(volume))
        row = {"case": case, "patient": volume.patient, "phase": volume.phase, **scores}
        row["dice_fg"] = case_dice_fg(row)
        if volume.group:
            row["group"] = volume.group
        cases.append(row)
    out = {"n_volumes": len(by_case), "cases": cases, "summary": summarize_cases(cases), "dice_fg": fg_summary(cases)}
    groups = group_summaries(cases)
    if groups:
        out["groups"] = groups
    clinical, n_patients = _clinical(data, predicted, truths)
    if clinical:
        out["clinical"], out["clinical_patients"] = clinical, n_patients
    return out


def _clinical(data: Dataset, predicted: dict, truths: dict) -> tuple[dict | None, int]:
    """LV/RV EDV, ESV, EF and myocardial mass of each patient with ED and ES, against the truth;
    and how many patients that is."""
    phases: dict[str, dict[str, str]] = {}
    for case in predicted:
        volume = data.volumes[case]
        if volume.phase in ("ED", "ES"):
            phases.setdefault(volume.patient, {})[volume.phase] = case
    pairs = [(p["ED"], p["ES"]) for p in phases.values() if len(p) == 2]
    if not pairs:
        return None, 0
    spacing = {case: volume_spacing(data.volumes[case]) for pair in pairs for case in pair}
    pred = [clinical_indices(predicted[ed], predicted[es], spacing[ed], spacing[es]) for ed, es in pairs]
    true = [clinical_indices(truths[ed], truths[es], spacing[ed], spacing[es]) for ed, es in pairs]
    return clinical_agreement(pred, true), len(pairs)
