"""The estimate's scoring floor on ACDC: the ground truths of its held-out train volumes, cut into
preprocessed slices and stacked back onto their source grids, scored against themselves as
``best --evaluate`` scores a prediction (``sweep.evaluate.volume_estimate``'s path, no model).

    OMP_NUM_THREADS=1 python benchmarks/estimate_floor.py --data ../shared/data/acdc

Uses ``training/`` only (the estimate's held-out train patients, ``--holdout 0.2``). Under a minute.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data import assemble, load_dataset, read_truth, volume_spacing  # noqa: E402
from sweep.folds import estimate_holdout  # noqa: E402
from sweep.volume_metrics import case_dice_fg, case_metrics  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/acdc")
    p.add_argument("--holdout", type=float, default=0.2)
    args = p.parse_args()
    data = load_dataset(args.data)
    held = estimate_holdout(data, args.holdout)
    row_of = {int(i): row for row, i in enumerate(held)}
    masks = data.train.masks[held]
    for case, idx in data.train.case_indices().items():
        if all(int(i) in row_of for i in idx):
            volume = data.volumes[case]
            scores = case_metrics(assemble(volume, masks[[row_of[int(i)] for i in idx]]), read_truth(volume),
                                  volume_spacing(volume))
            hd95 = " / ".join(f"{scores[f'hd95_{k}']:.2f}" for k in ("rv", "myo", "lv"))
            print(f"{case}  dice_fg {case_dice_fg(scores):.4f}  HD95 RV / Myo / LV {hd95} mm")


if __name__ == "__main__":
    main()
