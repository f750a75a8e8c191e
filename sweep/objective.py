"""The objective: one trial trains one SegNet, reports val dice_fg per epoch and may be pruned."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import optuna_dashboard
import torch

from model import SegNetConfig, count_parameters
from model.segnet import SegNet
from sweep.notes import dice_table_markdown
from sweep.pictures import overlay_png
from sweep.space import suggest
from sweep.train import DeviceSplit, DivergedError, FitResult, Fold, TrainConfig, fit_folds, load_model, predict_logits, use_bf16

HISTORY_KEYS = ("train_loss", "val_loss", "val_dice_bg", "val_dice_rv", "val_dice_myo", "val_dice_lv", "val_dice_fg")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def compact_history(history: list[dict[str, float]]) -> dict[str, list[float]]:
    """Per-epoch curves as one list per quantity, rounded: small enough for a trial attribute."""
    return {key: [round(record[key], 5) for record in history] for key in HISTORY_KEYS}


def save_checkpoint(path: Path, model_cfg: SegNetConfig, train_cfg: TrainConfig, result: FitResult, params: dict) -> None:
    """A checkpoint carries the hyperparameters that built it."""
    torch.save(
        {
            "model_config": model_cfg.to_dict(),
            "train_config": train_cfg.to_dict(),
            "params": params,
            "best_epoch": result.best_epoch,
            "val_scores": result.best_scores,
            "state_dict": result.state_dict,  # the (first) fold's model
            "fold_state_dicts": result.state_dicts,  # every fold's model (one without --cv)
            "fold_scores": result.fold_scores,
        },
        path,
    )


@dataclass
class Objective:
    """Train on ``train``, select and report on ``val``; or, given ``folds``, cross-validate.

    With folds (``--cv K``) a trial trains one model per fold in lockstep and its value and
    intermediate values are the mean fold ``dice_fg`` (``train``/``val`` are then the first
    fold's, used for the dashboard picture).
    """

    train: DeviceSplit
    val: DeviceSplit
    epochs: int
    seed: int = 0
    artifact_store: optuna.artifacts.FileSystemArtifactStore | None = None
    folds: list[Fold] | None = None

    @classmethod
    def cross_validated(cls, folds: list[Fold], epochs: int, **kwargs) -> Objective:
        return cls(folds[0][0], folds[0][1], epochs, folds=folds, **kwargs)

    def __call__(self, trial: optuna.Trial) -> float:
        model_cfg, train_cfg = suggest(trial, self.epochs)
        device = self.train.images.device
        trial.set_user_attr("epoch_budget", self.epochs)
        with torch.device("meta"):  # count without allocating or initialising the weights
            trial.set_user_attr("n_params", count_parameters(SegNet.from_config(model_cfg)))
        trial.set_user_attr("device", str(device))
        trial.set_user_attr("worker", worker_name())
        if self.folds:
            trial.set_user_attr("cv", len(self.folds))
        history: list[dict[str, float]] = []
        start = time.perf_counter()

        def record(result_like: dict) -> None:
            for key, value in result_like.items():
                trial.set_user_attr(key, value)

        def on_epoch(epoch: int, rec: dict[str, float]) -> None:
            history.append(rec)
            trial.report(rec["val_dice_fg"], epoch)
            if trial.should_prune():
                best = max(history, key=lambda r: r["val_dice_fg"])
                record(_summary(history, best, time.perf_counter() - start))
                trial.set_user_attr("pruned_at_epoch", epoch)
                raise optuna.TrialPruned(f"val dice_fg {rec['val_dice_fg']:.4f} at epoch {epoch} behind the median")

        try:
            folds = self.folds or [(self.train, self.val)]
            result = fit_folds(model_cfg, train_cfg, folds, seed=self.seed + trial.number, on_epoch=on_epoch)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted (Ctrl-C or SIGTERM)")
            raise
        except Exception as err:
            trial.set_user_attr("fail_reason", failure_reason(err))
            if isinstance(err, torch.OutOfMemoryError) and device.type == "cuda":
                torch.cuda.empty_cache()
            raise
        best = history[result.best_epoch - 1]
        record(_summary(history, best, result.seconds))
        if self.folds:
            trial.set_user_attr("cv_dice_fg_folds", [round(f["dice_fg"], 5) for f in result.fold_scores])
        self._maybe_upload_checkpoint(trial, model_cfg, train_cfg, result)
        self._show_in_dashboard(trial, model_cfg, result)
        return result.best_value

    def _show_in_dashboard(self, trial, model_cfg, result) -> None:
        """A picture of the best epoch's val predictions (artifact) and a Dice table (note)."""
        optuna_dashboard.save_note(trial, dice_table_markdown(trial.user_attrs))
        if self.artifact_store is None:
            return
        device = self.val.images.device
        model = load_model(model_cfg, result.state_dict, device)
        pred = predict_logits(model, self.val.images, use_bf16(device)).argmax(1).cpu().numpy().astype(np.uint8)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"trial{trial.number}_val_predictions.png"
            overlay_png(self.val.images[:, 0].cpu().numpy(), self.val.masks.cpu().numpy().astype(np.uint8), pred, path)
            optuna.artifacts.upload_artifact(
                artifact_store=self.artifact_store, file_path=str(path), study_or_trial=trial, mimetype="image/png"
            )

    def _maybe_upload_checkpoint(self, trial, model_cfg, train_cfg, result) -> None:
        """Keep the weights of a trial that beats every trial before it (an artifact the dashboard lists)."""
        if self.artifact_store is None:
            return
        try:
            if result.best_value <= trial.study.best_value:
                return
        except ValueError:  # no completed trial yet
            pass
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"trial{trial.number}_checkpoint.pt"
            save_checkpoint(path, model_cfg, train_cfg, result, trial.params)
            artifact_id = optuna.artifacts.upload_artifact(
                artifact_store=self.artifact_store, file_path=str(path), study_or_trial=trial,
                mimetype="application/octet-stream",
            )
        trial.set_user_attr("checkpoint_artifact", artifact_id)


def failure_reason(err: BaseException) -> str:
    """One line saying why a trial failed, for its ``fail_reason`` attribute."""
    if isinstance(err, DivergedError):
        kind = "diverged"
    elif isinstance(err, torch.OutOfMemoryError):
        kind = "out of memory"
    else:
        kind = type(err).__name__
    text = str(err).strip().splitlines()
    return f"{kind}: {text[0]}" if text else kind


def _summary(history: list[dict[str, float]], best: dict[str, float], seconds: float) -> dict:
    return {
        "best_epoch": best["epoch"],
        "epochs_run": len(history),
        "seconds": round(seconds, 2),
        **{key[len("val_"):]: round(best[key], 5) for key in best if key.startswith("val_dice_")},
        "history": compact_history(history),
    }
