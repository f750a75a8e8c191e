"""The benchmark script (benchmarks/bench.py) on tiny settings: it runs, and its figures are sane."""

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import bench, naive
from sweep.search.space import configs_from_params

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


def test_conv_shapes_count_every_conv_of_a_training_batch():
    cfg = bench.SegNetConfig(depth=2, base_width=4, convs_per_stage=(2, 1), kernel_size=3)
    shapes = bench.conv_shapes(cfg, (16, 16), batch=10)
    assert all(shape.batch == 10 for shape in shapes)
    # The same FLOPs as conv_flops counts on one slice, ten times over.
    assert sum(count * shape.forward_flops() for shape, count in shapes.items()) == 10 * bench.conv_flops(cfg, (16, 16))
    # encoder 1->4, 4->4 (16x16), 4->8 (8x8); decoder 8->4 (8x8), 4->4 twice (16x16); classifier 4->4
    assert sum(shapes.values()) == 7
    assert max(shapes.values()) == 3  # 4->4 at 16x16, without bias: twice in the decoder, once in the encoder


def test_conv_probe_reports_a_positive_rate():
    torch.set_num_threads(1)
    cfg = bench.SegNetConfig(depth=1, base_width=4, convs_per_stage=(1,))
    probe = bench.conv_probe(cfg, (16, 16), torch.device("cpu"), bf16=False, min_seconds=0.0)
    assert probe["distinct"] == len(probe["shapes"]) == 3 and probe["batch"] == bench.TRAINER_CFG.batch_size
    assert probe["tflops"] > 0 and probe["seconds_per_batch"] > 0
    assert probe["tflops"] == pytest.approx(probe["train_tflop_per_batch"] / probe["seconds_per_batch"])


def test_time_to_quality_figures_from_a_summary_file(tmp_path, monkeypatch):
    missing = bench.time_to_quality_figures(tmp_path / "none.json")
    assert missing == {"time_to_quality_gain": None, "time_to_quality_speedup": None, "time_to_quality_source": None}
    path = tmp_path / "time_to_quality.json"
    path.write_text(json.dumps({"time_to_quality_gain": 0.05, "time_to_quality_speedup": None,
                                "machine": {"cpu": "test"}, "minutes": 60, "date": "2026-11-27"}))
    monkeypatch.setenv(bench.TIME_TO_QUALITY_ENV, str(path))  # the default path, overridden
    figures = bench.time_to_quality_figures()
    assert figures["time_to_quality_gain"] == 0.05 and figures["time_to_quality_speedup"] is None
    assert figures["time_to_quality_source"] == {"path": str(path), "minutes": 60, "date": "2026-11-27",
                                                 "machine": {"cpu": "test"}}
    path.write_text("not json")
    broken = bench.time_to_quality_figures()
    assert broken["time_to_quality_gain"] is None and "error" in broken["time_to_quality_source"]


def test_time_to_quality_figures_fall_back_to_the_committed_record(tmp_path, monkeypatch):
    monkeypatch.delenv(bench.TIME_TO_QUALITY_ENV, raising=False)
    monkeypatch.setattr(bench, "TIME_TO_QUALITY_JSON", tmp_path / "no-results-here.json")
    figures = bench.time_to_quality_figures()
    record = json.loads(bench.TIME_TO_QUALITY_RECORD.read_text())
    assert figures["time_to_quality_source"]["path"] == str(bench.TIME_TO_QUALITY_RECORD)
    assert figures["time_to_quality_source"]["minutes"] == record["minutes"] == 60
    assert figures["time_to_quality_gain"] == record.get("time_to_quality_gain")
    results = tmp_path / "time_to_quality.json"  # a run of one's own comes first
    results.write_text(json.dumps({"time_to_quality_gain": -0.01, "minutes": 5}))
    monkeypatch.setattr(bench, "TIME_TO_QUALITY_JSON", results)
    assert bench.time_to_quality_figures()["time_to_quality_gain"] == -0.01


def test_targets_judge_time_to_quality_and_the_ceiling_not_sweep_throughput():
    assert "sweep_speedup" not in bench.TARGETS
    assert bench.TARGETS["trainer_peak_fraction_vgg16"] == (">=", 0.8)
    assert bench.TARGETS["trainer_peak_fraction_small"] == (">=", 0.6)
    assert bench.TARGETS["trainer_speedup_small"] == bench.TARGETS["trainer_speedup_vgg16"] == (">=", 2.0)
    assert bench.TARGETS["time_to_quality_gain"] == (">=", 0.03)
    assert bench.TARGETS["time_to_quality_speedup"] == (">=", 2.5)
    met = bench.check_targets({"time_to_quality_gain": 0.02, "time_to_quality_speedup": 3.0, "sweep_speedup": 1.0})
    assert met == {"time_to_quality_gain": {"target": ">= 0.03", "met": False},
                   "time_to_quality_speedup": {"target": ">= 2.5", "met": True}}


def test_overhead_section_with_tiny_counts(tmp_path):
    torch.set_num_threads(1)
    result = bench.overhead_run(f"sqlite:///{tmp_path / 'o.db'}", 5)
    assert result["complete"] + result["pruned"] == 5 and result["failed"] == 0
    assert len(result["ends_s"]) == 5
    assert result["ends_s"] == sorted(result["ends_s"])
    assert 0 < result["total_s"] < 30
    assert 0 <= result["sampler_s"] <= result["total_s"]


def test_overhead_on_postgres_deletes_its_study(postgres_url):
    import optuna

    url = postgres_url
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
    return subprocess.run([sys.executable, "-m", "benchmarks.bench", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_smoke_json_of_the_cheap_sections(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv(bench.TIME_TO_QUALITY_ENV, str(tmp_path / "absent.json"))
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
    assert "sweep_speedup" not in result["targets"]
    # No time-to-quality summary: the keys are there, null, and not checked against their targets.
    assert result["time_to_quality_gain"] is None and result["time_to_quality_speedup"] is None
    assert result["time_to_quality_source"] is None and "time_to_quality_gain" not in result["targets"]


@pytest.mark.slow
def test_smoke_json_of_trainer_and_ceiling(capsys, tmp_path, monkeypatch):
    ttq = tmp_path / "time_to_quality.json"
    ttq.write_text(json.dumps({"time_to_quality_gain": 0.04, "time_to_quality_speedup": 2.0,
                               "machine": "test machine", "minutes": 60}))
    monkeypatch.setenv(bench.TIME_TO_QUALITY_ENV, str(ttq))
    assert bench.main(["--smoke", "--json", "--only", "trainer,peak", "--data", "phantom"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["errors"] == {}
    for arch in bench.ARCHS:  # probed for every architecture, also where the trainer did not run it
        probe, ceiling = result[f"conv_probe_tflops_{arch}"], result[f"ceiling_tflops_{arch}"]
        assert probe > 0
        assert ceiling == max(probe, result["peak_matmul_tflops_bf16"], result["peak_matmul_tflops_fp32"])
        assert result["raw"]["peak"]["conv_probe"][arch]["bf16"] == result["machine"]["bf16"]
    fraction = result["trainer_peak_fraction_small"]  # --smoke trains the small architecture only
    assert fraction == pytest.approx(result["trainer_tflops_small_ours"] / result["ceiling_tflops_small"], rel=1e-9)
    assert fraction > 0  # no upper bound: on a busy machine the probe can suffer more than the trainer
    assert result["trainer_peak_fraction_vgg16"] is None
    assert not any(key.startswith("trainer_fraction_of_peak") for key in result)
    assert result["targets"]["trainer_peak_fraction_small"]["target"] == ">= 0.6"
    assert "sweep_speedup" not in result["targets"]
    assert (result["time_to_quality_gain"], result["time_to_quality_speedup"]) == (0.04, 2.0)
    assert result["time_to_quality_source"]["path"] == str(ttq)
    assert result["time_to_quality_source"]["minutes"] == 60 and result["time_to_quality_source"]["date"]
    assert result["targets"]["time_to_quality_gain"] == {"target": ">= 0.03", "met": True}
    assert result["targets"]["time_to_quality_speedup"] == {"target": ">= 2.5", "met": False}


@pytest.mark.slow
def test_smoke_json_of_every_section():
    proc = run_bench("--smoke", "--json", "--data", "phantom")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    for key in ("trainer_speedup_small", "sweep_speedup", "sweep_trials_per_hour_ours",
                "sweep_trials_per_hour_naive", "overhead_pct_5_sqlite", "rss_growth_pct_5_to_20", "peak_rss_mb"):
        assert isinstance(result[key], float), key
    assert "sweep_speedup" not in result["targets"]
    memory = result["raw"]["memory"]
    assert len(memory["rss_mb"]) == 20
    assert memory["states"] == ["COMPLETE"] * 20
    assert result["raw"]["sweep"]["runs"]["ours_w1"][0]["finished"] == 2
    ratios = result["sweep_trial_ratio_per_config"]  # one per configuration, each a naive/ours time ratio
    assert len(ratios) == 2 and all(r > 0 for r in ratios)


def test_the_step_profile_splits_an_epoch_into_operator_families():
    from benchmarks import profile_step

    assert profile_step.family("aten::native_batch_norm_backward") == "batch_norm"
    assert profile_step.family("aten::convolution_backward") == "convolution"
    assert profile_step.family("aten::max_unpool2d") == "pool_unpool"
    out = profile_step.shares("small", epochs=1)
    assert sum(out["shares"].values()) == pytest.approx(1.0, abs=1e-3)
    assert out["shares"]["convolution"] > 0.1 and out["seconds_per_epoch"] > 0


def test_batch_variants_train_with_their_own_batch(phantom_data, monkeypatch):
    from benchmarks import gpu_variants

    torch.set_num_threads(1)
    seen, real_fit = [], bench.fit

    def spy(model_cfg, cfg, *args, **kwargs):
        seen.append(cfg.batch_size)
        return real_fit(model_cfg, cfg, *args, **kwargs)

    monkeypatch.setattr(bench, "fit", spy)
    monkeypatch.setitem(gpu_variants.ARCHS, "tiny", bench.SegNetConfig(depth=2, base_width=4, convs_per_stage=(1, 1)))
    train, val = bench.device_splits(phantom_data, torch.device("cpu"))
    for name in ("trainer", "batch20", "batch40"):
        epoch_s, first_s = gpu_variants.time_variant(name, "tiny", train, val, epochs=1, warmup=1, seed=0)
        assert epoch_s > 0 and first_s > 0
    assert seen == [10, 20, 40]


def test_the_fused_bn_relu_variant_computes_what_the_model_does(monkeypatch):
    from benchmarks import gpu_variants
    from model import SegNet

    # The compiled kernel is torch's; what the variant adds is the swap, checked here with the
    # same function run eagerly.
    monkeypatch.setattr(gpu_variants.FusedBNReLU, "kernel", gpu_variants._bn_relu)
    torch.manual_seed(0)
    plain = SegNet(depth=2, base_width=4, convs_per_stage=(2, 1))
    fused = gpu_variants.fuse_bn_relu(copy.deepcopy(plain))
    n_fused = sum(isinstance(m, gpu_variants.FusedBNReLU) for m in fused.modules())
    assert n_fused == sum(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules()) == 6
    x = torch.randn(3, 1, 16, 16)
    for model in (plain, fused):
        model.train()
        model(x).square().mean().backward()
    for (name, a), b in zip(plain.named_parameters(), fused.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    fused_state = {name.replace(".bn.", "."): value for name, value in fused.state_dict().items()}
    plain_state = plain.state_dict()
    assert fused_state.keys() == plain_state.keys()
    for name, value in plain_state.items():  # running statistics and batch counts moved alike
        torch.testing.assert_close(fused_state[name], value, msg=name)
    plain.eval(), fused.eval()
    torch.testing.assert_close(fused(x), plain(x))


# --- benchmarks/busy.py: the tool on a busy machine (issue 37) -----------------------------------


def test_busy_reports_each_load_against_idle_and_the_policies_against_each_other():
    from benchmarks import busy

    results = {"first": {"idle": {"old": {"seconds": 100.0, "shipped": True}, "new": {"seconds": 103.0, "shipped": True}},
                         "busy": {"old": {"seconds": 900.0, "shipped": False}, "new": {"seconds": 230.0, "shipped": True}}}}
    assert busy.ratios(results) == {"first/old/busy_over_idle": 9.0, "first/new/busy_over_idle": 2.23,
                                    "first/idle_new_over_old": 1.03}
    text = busy.table(results)
    assert "| first | old | 100 s | did not finish (900.0 s) | – |" in text
    assert "| first | new | 103 s | 230 s (2.2x) | – |" in text
    with pytest.raises(SystemExit):
        busy.parse_args(["--loads", "idle,nonsense"])


@pytest.mark.slow
def test_busy_quick_runs_the_first_command_under_both_policies(tmp_path):
    from benchmarks import busy

    out = tmp_path / "busy.json"
    assert busy.main(["--quick", "--workloads", "first,acdc", "--loads", "idle", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    for policy in ("old", "new"):
        assert result["results"]["first"]["idle"][policy]["shipped"]
        assert result["results"]["acdc"]["idle"][policy]["seconds"] > 0
    assert "first/idle_new_over_old" in result["ratios"]
