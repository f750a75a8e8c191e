"""The estimate's scoring floor on ACDC: the ground truths of its held-out train volumes, cut into
preprocessed slices and stacked back onto their source grids, scored against themselves as
``best --evaluate`` scores a prediction (``sweep.shipping.evaluate.volume_estimate``'s path, no model).

    OMP_NUM_THREADS=1 python -m benchmarks.estimate_floor --data ../shared/data/acdc

Uses ``training/`` only (the estimate's held-out train patients, ``--holdout 0.2``). Under a minute.
"""

from __future__ import annotations

import argparse

from data import assemble, load_dataset, read_truth, volume_spacing
from sweep.training.folds import estimate_holdout
from sweep.nn.volume_metrics import case_dice_fg, case_metrics


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
