"""The benchmark script (benchmarks/bench.py) on tiny settings: it runs, and its figures are sane."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import bench, naive
from sweep.space import configs_from_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def phantom_data(tmp_path_factory):
    """A few phantom slices as PNGs in the coursework layout."""
    return bench.prepare_data("phantom", bench.PROFILES["smoke"], tmp_path_factory.mktemp("bench-data"))


def test_phantom_data_is_a_coursework_folder(phantom_data):
    assert phantom_data.synthetic
    assert (phantom_data.n_train, phantom_data.n_val) == (10, 4)
    assert phantom_data.size == (96, 96)
    images = sorted((phantom_data.folder / "train" / "image").glob("*.png"))
    assert all((phantom_data.folder / "train" / "mask" / f"{p.stem}_mask.png").is_file() for p in images)


def test_png_dataset_reads_images_and_masks(phantom_data):
    image, mask = naive.PngDataset(phantom_data.folder / "train")[0]
    assert image.shape == (1, 96, 96) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert mask.shape == (96, 96) and mask.dtype == torch.int64
    assert set(mask.unique().tolist()) <= {0, 1, 2, 3}


def test_naive_baseline_trains_with_a_finite_loss(phantom_data):
    torch.set_num_threads(1)
    cfg = bench.SegNetConfig(depth=2, base_width=4, convs_per_stage=(1, 1))
    history = naive.naive_fit(cfg, phantom_data.folder, epochs=1, device=torch.device("cpu"), batch_size=5)
    assert len(history) == 1
    record = history[0]
    assert math.isfinite(record["train_loss"]) and record["seconds"] > 0
    # cross-entropy of a softmax output: log(4) is the loss of a uniform prediction
    assert 0 < record["train_loss"] < 2 * math.log(4)
    assert 0.0 <= record["val_dice_fg"] <= 1.0


def test_naive_loss_is_cross_entropy_of_the_softmax():
    logits = torch.randn(2, 4, 3, 3)
    target = torch.randint(0, 4, (2, 3, 3))
    probs = logits.softmax(1)
    expected = torch.nn.functional.cross_entropy(probs, target)
    assert torch.nn.CrossEntropyLoss()(probs, target) == pytest.approx(float(expected))
    assert float(expected) != pytest.approx(float(torch.nn.functional.cross_entropy(logits, target)))


def test_sweep_configs_belong_to_the_search_space():
    assert len(bench.SWEEP_CONFIGS) == 8
    for params in bench.SWEEP_CONFIGS + [bench.MEMORY_PARAMS]:
        configs_from_params(params, 3)  # raises if a parameter is missing or out of the space


def test_conv_flops_of_a_single_conv():
    cfg = bench.SegNetConfig(depth=1, base_width=8, convs_per_stage=(1,), kernel_size=3)
    # encoder 1->8, decoder 8->8, classifier 8->4, all 3x3 at 16x16
    expected = 2 * 16 * 16 * 9 * (1 * 8 + 8 * 8 + 8 * 4)
    assert bench.conv_flops(cfg, (16, 16)) == expected


def test_overhead_section_with_tiny_counts(tmp_path):
    torch.set_num_threads(1)
    result = bench.overhead_run(f"sqlite:///{tmp_path / 'o.db'}", 5)
    assert result["complete"] + result["pruned"] == 5 and result["failed"] == 0
    assert len(result["ends_s"]) == 5
    assert result["ends_s"] == sorted(result["ends_s"])
    assert 0 < result["total_s"] < 30
    assert 0 <= result["sampler_s"] <= result["total_s"]


@pytest.mark.skipif(not os.environ.get("SEGNET_TEST_POSTGRES_URL"), reason="SEGNET_TEST_POSTGRES_URL not set")
def test_overhead_on_postgres_deletes_its_study():
    import optuna

    url = os.environ["SEGNET_TEST_POSTGRES_URL"]
    result = bench.overhead_run(url, 5)
    assert result["complete"] + result["pruned"] == 5 and result["failed"] == 0
    assert result["study"] not in {s.study_name for s in optuna.get_all_study_summaries(url)}


def test_proc_status_reads_resident_memory():
    rss, peak = bench.proc_status_mb("VmRSS"), bench.proc_status_mb("VmHWM")
    assert 10 < rss <= peak


def test_only_rejects_an_unknown_section(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--only", "trainer,nonsense"])
    assert exit_info.value.code == 2
    assert "nonsense" in capsys.readouterr().err


def run_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_smoke_json_of_the_cheap_sections(capsys):
    assert bench.main(["--smoke", "--json", "--only", "trainer,overhead", "--data", "phantom"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)  # stdout is one JSON object; progress went to stderr
    assert "== trainer" in err
    for key in ("trainer_speedup_small", "trainer_images_per_s_small_ours", "trainer_images_per_s_small_naive",
                "overhead_ms_per_trial_5_sqlite", "overhead_pct_5_sqlite", "overhead_ms_per_trial_10_sqlite",
                "machine", "raw", "settings", "targets"):
        assert key in result, key
    assert result["trainer_speedup_small"] > 0
    assert result["overhead_ms_per_trial_10_sqlite"] > 0
    assert result["synthetic_data"] is True
    assert {"cpu", "cores", "torch", "bf16", "device"} <= set(result["machine"])
    assert set(result["raw"]) == {"trainer", "overhead"}
    assert result["errors"] == {}


@pytest.mark.slow
def test_smoke_json_of_every_section():
    proc = run_bench("--smoke", "--json", "--data", "phantom")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    for key in ("trainer_speedup_small", "sweep_speedup", "sweep_trials_per_hour_ours",
                "sweep_trials_per_hour_naive", "overhead_pct_5_sqlite", "rss_growth_pct_5_to_20", "peak_rss_mb"):
        assert isinstance(result[key], float), key
    memory = result["raw"]["memory"]
    assert len(memory["rss_mb"]) == 20
    assert memory["states"] == ["COMPLETE"] * 20
    assert result["raw"]["sweep"]["runs"]["ours_w1"][0]["finished"] == 2
    ratios = result["sweep_trial_ratio_per_config"]  # one per configuration, each a naive/ours time ratio
    assert len(ratios) == 2 and all(r > 0 for r in ratios)
