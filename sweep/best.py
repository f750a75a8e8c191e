"""`python -m sweep best [--evaluate]`: the best trial, and its retraining and test evaluation."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch
from tqdm.auto import tqdm

from data import load_dataset, write_mask
from sweep import study as st
from sweep.errors import UsageError
from sweep.metrics import CLASS_NAMES, dice_counts, dice_from_counts
from sweep.space import configs_from_params
from sweep.train import DeviceSplit, fit, load_model, predict_logits, resolve_device, use_bf16


@dataclass
class BestOptions:
    evaluate: bool = False
    seeds: int = 1
    data: str | None = None  # None: the data source recorded on the study
    out: str = "best"
    json: bool = False
    storage: str = st.DEFAULT_STORAGE
    study: str = st.DEFAULT_STUDY
    device: str = "auto"
    progress: bool = True

    def check(self) -> None:
        if self.seeds <= 0:
            raise UsageError(f"--seeds must be a positive integer, got {self.seeds}")


def open_study_readonly(storage_url: str, name: str) -> optuna.Study:
    st.check_storage_url(storage_url)
    db = st.sqlite_path(storage_url)
    if db is not None and not db.exists():
        raise UsageError(f"--storage {storage_url!r}: {db} does not exist (run `python -m sweep run` first)")
    return st.load_study(st.make_storage(storage_url, heartbeat=False), name)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    try:
        return study.best_trial
    except ValueError:
        raise UsageError(f"--study {study.study_name!r}: no complete trial yet") from None


def describe_best(study: optuna.Study) -> dict:
    trial = best_trial(study)
    val = {f"dice_{c}": trial.user_attrs.get(f"dice_{c}") for c in CLASS_NAMES}
    return {
        "study": study.study_name,
        "trial": trial.number,
        "params": trial.params,
        "val_dice_fg": trial.value,
        "val": val,
        "best_epoch": trial.user_attrs.get("best_epoch"),
        "epochs": trial.user_attrs.get("epoch_budget", study.user_attrs.get("epochs")),
    }


def evaluate_best(study: optuna.Study, opts: BestOptions) -> dict:
    """Retrain the best trial from scratch ``opts.seeds`` times and evaluate each on the test split."""
    summary = describe_best(study)
    source = opts.data or study.user_attrs.get("data_source")
    if source is None:
        raise UsageError(f"--study {study.study_name!r}: records no data source; pass --data")
    data = load_dataset(source)
    recorded = study.user_attrs.get("data_fingerprint")
    if recorded is not None and recorded != data.fingerprint:
        raise UsageError(f"--data {source}: not the train/val data study {study.study_name!r} was tuned on")
    device = resolve_device(opts.device)
    model_cfg, train_cfg = configs_from_params(summary["params"], summary["epochs"])

    train = DeviceSplit.from_arrays(data.train.images, data.train.masks, device)
    val = DeviceSplit.from_arrays(data.val.images, data.val.masks, device)
    test_images = DeviceSplit.from_arrays(data.test.images, None, device).images
    seeds = list(range(opts.seeds))
    runs = []
    bar = tqdm(total=len(seeds) * train_cfg.epochs, desc="retrain best", unit="epoch", disable=not opts.progress, file=sys.stderr)
    for seed in seeds:
        bar.set_postfix(seed=seed)
        result = fit(model_cfg, train_cfg, train, val, seed=seed, on_epoch=lambda epoch, rec: bar.update(1))
        model = load_model(model_cfg, result.state_dict, device)
        pred = predict_logits(model, test_images, use_bf16(device)).argmax(1).cpu()
        test = None
        if data.test.masks is not None:
            test = dice_from_counts(dice_counts(pred, torch.as_tensor(data.test.masks)))
        runs.append({"seed": seed, "val_dice_fg": result.best_value, "best_epoch": result.best_epoch, "test": test, "pred": pred})
    bar.close()

    out = Path(opts.out)
    chosen = max(runs, key=lambda r: r["val_dice_fg"])  # masks from the seed that did best on val
    mask_dir = out / "masks"
    mask_dir.mkdir(parents=True, exist_ok=True)
    for name, mask in zip(data.test.names, chosen["pred"].numpy().astype(np.uint8)):
        write_mask(mask_dir / f"{name}_mask.png", mask)

    result = {
        "study": study.study_name,
        "trial": summary["trial"],
        "params": summary["params"],
        "val_dice_fg": summary["val_dice_fg"],
        "val": summary["val"],
        "seeds": seeds,
        "test": aggregate_test([r["test"] for r in runs], len(data.test)) if data.test.masks is not None else None,
        "n_test_images": len(data.test),
        "runs": [{k: r[k] for k in ("seed", "val_dice_fg", "best_epoch", "test")} for r in runs],
        "masks": str(mask_dir.resolve()),
        "mask_seed": chosen["seed"],
        "data": data.describe(),
        "synthetic_data": data.synthetic,
    }
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(result, indent=2))
    record_evaluation(study, result, summary_path, st.default_artifact_dir(opts.storage))
    return result


def aggregate_test(per_seed: list[dict], n_images: int) -> dict:
    """Mean over seeds of each Dice, with the spread of dice_fg."""
    keys = [f"dice_{c}" for c in CLASS_NAMES] + ["dice_fg", "dice_mean4"]
    out: dict = {"n_images": n_images}
    for key in keys:
        values = np.array([r[key] for r in per_seed])
        out[key] = round(float(values.mean()), 5)
        if key == "dice_fg":
            out["dice_fg_std"] = round(float(values.std(ddof=1)) if len(values) > 1 else 0.0, 5)
    return out


def record_evaluation(study: optuna.Study, result: dict, summary_path: Path, artifact_dir: Path) -> None:
    """The evaluation goes on the study (attribute and artifact), never into a trial."""
    study.set_user_attr("evaluation", {k: result[k] for k in ("trial", "seeds", "test", "val_dice_fg", "n_test_images")})
    artifact_dir.mkdir(parents=True, exist_ok=True)
    store = optuna.artifacts.FileSystemArtifactStore(str(artifact_dir))
    optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(summary_path), study_or_trial=study)
