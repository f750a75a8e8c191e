"""The records a study holds have one schema each (sweep/core/records.py): what is written reads back
as itself, older records read with their defaults, and the shapes are docs/FORMATS.md's."""

from __future__ import annotations

import json

import optuna
import pytest

from sweep.core import records as rec
from sweep.core.records import ArtifactLocation, Evaluation, Fidelity, ProgressKey, StudyKey, TrialProgress


@pytest.mark.parametrize("record", [
    Fidelity(2000, 500, 128),
    ArtifactLocation("s3://bucket/segnet", "gpu-box"),
    TrialProgress(epoch=3, epochs=20, last=0.81, best=0.83, seconds=12.5),
    TrialProgress(epoch=3, epochs=20, last=0.81, best=0.83, seconds=12.5, step=7, steps=40),
    Evaluation(trial=4, seeds=[0, 1], test=None, val_dice_fg=0.9, n_test_images=80, postprocess={"tta": True},
               estimate={"n_images": 15}, cv=0, out="best", model="/x/model.pt"),
])
def test_each_record_reads_back_as_itself_through_json(record):
    assert type(record).from_dict(json.loads(json.dumps(record.to_dict()))) == record
    assert isinstance(type(record).VERSION, int)


def test_the_shapes_are_the_documented_ones():
    assert Fidelity().to_dict() == {"epoch_slices": 0, "val_slices": 0, "patch": 0}
    assert ArtifactLocation("/shared/a", "h").to_dict() == {"location": "/shared/a", "host": "h"}
    names = {v for k, v in vars(ProgressKey).items() if k.isupper()}
    assert set(TrialProgress(step=1, steps=2).to_dict()) == names
    assert ProgressKey.STEP not in TrialProgress(epoch=1).to_dict()  # only inside an epoch
    summary = {"study": "segnet", "trial": 2, "seeds": [0], "test": {"dice_fg": 0.9}, rec.VAL_DICE_FG: 0.8,
               "n_test_images": 80, "postprocess": {}, "estimate": None, "cv": 0, "out": "best", "model": "m.pt",
               "masks": "masks", "volumes": None}
    recorded = Evaluation.of_summary(summary).to_dict()
    assert list(recorded) == list(rec.EVALUATION_KEYS)  # no files, no empty volumes
    with_volumes = Evaluation.of_summary({**summary, "volumes": {"cases": []}}).to_dict()
    assert list(with_volumes) == [*rec.EVALUATION_KEYS, "volumes"]


def test_older_studies_read_with_defaults():
    study = optuna.create_study()
    assert Fidelity.of_study(study) == Fidelity()  # made before the fidelity was recorded: whole passes
    assert ArtifactLocation.of_study(study) is None and Evaluation.of_study(study) is None
    study.set_user_attr(StudyKey.FIDELITY, {"patch": 128, "unknown": 1})
    assert Fidelity.of_study(study) == Fidelity(patch=128)
    assert TrialProgress.from_dict({"epoch": 2}).epochs is None
