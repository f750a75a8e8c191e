"""What people look at: status, CSV export, the HTML report, optuna-dashboard, checked in a real browser.

One real tiny study (three fast trials of two epochs, then `best --evaluate`) is made once for the
module; the views only read it.
"""

import base64
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import optuna
import pytest
from PIL import Image

from sweep.cli import main
from sweep.core.notes import dice_table_markdown
from sweep.nn.pictures import CLASS_COLOURS, overlay_png
from sweep.search.presets import preset
from sweep.views.report import edge_warnings, learning_curves

ROOT = Path(__file__).resolve().parents[1]
SMALL_PARAMS = preset("small")  # a fast configuration that does not depend on what the sampler draws

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1400,1000", "--virtual-time-budget=10000",
]
# Fast variants of SMALL_PARAMS: three trials that differ, without waiting for what TPE samples
# (a sampled SegNet can take minutes per epoch on a CPU).
VARIANTS = [{**SMALL_PARAMS, "lr": 1e-2, "dice_weight": 0.8}, {**SMALL_PARAMS, "lr": 6e-3, "weight_decay": 1e-3}]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A finished, evaluated study in its own folder; returns (folder, storage URL)."""
    root = tmp_path_factory.mktemp("views")
    url = f"sqlite:///{root / 'studies.db'}"
    # The study exists empty, with the variants queued behind SMALL_PARAMS, so that one `run`
    # (which records its own command and metadata on the study) runs exactly these three.
    study = optuna.create_study(study_name="segnet", storage=url, direction="maximize")
    for params in (SMALL_PARAMS, *VARIANTS):
        study.enqueue_trial(params)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # `best` writes best/ relative to the working directory
        args = ["run", "--trials", "3", "--epochs", "2", "--quiet", "--storage", url, "--enqueue", json.dumps(SMALL_PARAMS)]
        assert main(args) == 0
        assert main(["best", "--evaluate", "--json", "--quiet", "--storage", url]) == 0
    return root, url


# ---------------------------------------------------------------- pictures and notes (fast)


def test_overlay_png_grid(tmp_path):
    images = np.full((10, 24, 32), 0.5, np.float32)
    truth = np.zeros((10, 24, 32), np.uint8)
    truth[:, 4:10, 4:10] = 3
    pred = np.roll(truth, 2, axis=2)
    overlay_png(images, truth, pred, tmp_path / "three.png", max_slices=4)
    overlay_png(images, None, pred, tmp_path / "two.png", max_slices=20)
    three, two = Image.open(tmp_path / "three.png"), Image.open(tmp_path / "two.png")
    assert three.format == "PNG" and three.mode == "RGB"
    assert three.height > two.height  # a ground-truth row only where there is ground truth
    assert two.width > three.width  # all 10 slices when max_slices allows
    # the LV colour shows (blended) inside the truth square of the first slice, upscaled x2
    lv = np.array(CLASS_COLOURS[3])
    pixel = np.array(three.getpixel((96 + 2 * 6, (2 * 24 + 4) + 2 * 6)))  # label column, then row 2
    assert np.abs(pixel - lv).max() < np.abs(128 - lv).max() / 2 + 2  # half way from grey to LV
    with pytest.raises(ValueError):
        overlay_png(images, truth[:2], pred, tmp_path / "bad.png")


def test_dice_table_markdown():
    attrs = {"dice_bg": 0.99, "dice_rv": 0.8, "dice_myo": 0.7, "dice_lv": 0.9, "dice_fg": 0.8,
             "dice_mean4": 0.8475, "best_epoch": 7, "epochs_run": 10}
    text = dice_table_markdown(attrs)
    assert "epoch 7 of 10" in text
    assert "| RV | 0.8000 |" in text and "| LV | 0.9000 |" in text and "|---|---:|" in text
    trial = optuna.trial.create_trial(value=0.5, user_attrs={"dice_rv": 0.5})
    assert "| myocardium | – |" in dice_table_markdown(trial)  # missing values still give a table


# ---------------------------------------------------------------- report pieces (fast, in memory)


def _in_memory_study(values_and_lrs, widths=None):
    study = optuna.create_study(direction="maximize")
    dists = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
             "base_width": optuna.distributions.CategoricalDistribution((8, 16, 32, 64)),
             "schedule": optuna.distributions.CategoricalDistribution(("constant", "cosine"))}
    for i, (value, lr) in enumerate(values_and_lrs):
        params = {"lr": lr, "base_width": (widths or [16] * len(values_and_lrs))[i], "schedule": "cosine"}
        study.add_trial(optuna.trial.create_trial(value=value, params=params, distributions=dists))
    return study


def test_edge_warnings():
    # the three best trials all sit in the top tenth of the log range 1e-4..1e-2 and use width 64
    study = _in_memory_study([(0.9, 9e-3), (0.88, 1e-2), (0.87, 8e-3), (0.5, 1e-3), (0.4, 2e-4)], [64, 64, 64, 8, 8])
    warnings = edge_warnings(study)
    assert any(w.startswith("lr: the best trials sit at the upper edge") and "consider widening" in w for w in warnings)
    assert any(w.startswith("base_width:") and "largest choice" in w for w in warnings)
    assert not any(w.startswith("schedule") for w in warnings)  # unordered choices have no edges
    assert edge_warnings(_in_memory_study([(0.9, 1e-3), (0.8, 9e-3), (0.7, 1e-4)])) == []
    assert edge_warnings(_in_memory_study([(0.9, 1e-2), (0.8, 1e-2)])) == []  # too few trials to judge


def test_no_edge_warning_suggests_values_that_mean_nothing():
    study = optuna.create_study(direction="maximize")
    dist = {"kernel_size": optuna.distributions.CategoricalDistribution((3, 5))}
    for value in (0.9, 0.88, 0.87, 0.5):
        study.add_trial(optuna.trial.create_trial(value=value, params={"kernel_size": 3}, distributions=dist))
    [warning] = edge_warnings(study)
    assert warning.startswith("kernel_size:") and "consider adding" not in warning and "nothing smaller" in warning


def test_history_axis_counts_whole_trials():
    from sweep.views.report import history_plot

    study = _in_memory_study([(0.5, 1e-3), (0.6, 2e-3), (0.7, 3e-3)])
    assert history_plot(study).layout.xaxis.tickformat == "d"


def test_learning_curves_mark_pruned_trials():
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.8, intermediate_values={1: 0.5, 2: 0.8}))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, intermediate_values={1: 0.2}))
    fig = learning_curves(study)
    complete, pruned = fig.data
    assert "pruned" in pruned.name and pruned.line.dash == "dash"
    assert complete.line.dash is None


# ---------------------------------------------------------------- status and export


@pytest.mark.slow
def test_status(made, capsys):
    root, url = made
    capsys.readouterr()
    assert main(["status", "--json", "--storage", url]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["states"]["complete"] == 3 and status["finished"] == 3 and status["target"] == 3
    assert status["running"] == []
    study = optuna.load_study(study_name="segnet", storage=url)
    assert status["best"]["trial"] == study.best_trial.number
    assert status["best"]["val_dice_fg"] == pytest.approx(study.best_value)
    assert status["evaluation"]["trial"] == study.best_trial.number
    assert main(["status", "--storage", url]) == 0
    text = capsys.readouterr().out
    assert "3 of 3 trials finished (3 complete, 0 pruned, 0 failed, 0 running)" in text
    assert f"best: trial {study.best_trial.number}" in text


@pytest.mark.slow
def test_status_lists_running_trial(made, tmp_path, capsys):
    copy = tmp_path / "studies.db"
    shutil.copy(made[0] / "studies.db", copy)  # the module's study stays as it is
    url = f"sqlite:///{copy}"
    study = optuna.load_study(study_name="segnet", storage=url)
    asked = time.time()
    trial = study.ask()
    trial.set_user_attr("worker", "gpu-box:4242")
    capsys.readouterr()
    assert main(["status", "--json", "--storage", url]) == 0
    since_asked = time.time() - asked
    status = json.loads(capsys.readouterr().out)
    assert status["states"]["running"] == 1
    [running] = status["running"]
    assert running["trial"] == trial.number and running["worker"] == "gpu-box:4242"
    assert 0 <= running["age_s"] <= round(since_asked, 1) + 0.1  # the trial's age, not the study's
    assert main(["status", "--storage", url]) == 0
    assert f"running: trial {trial.number} on gpu-box:4242 for " in capsys.readouterr().out


def test_status_of_missing_study_is_a_usage_error(tmp_path, capsys):
    assert main(["status", "--storage", f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()  # looking must not create a database


@pytest.mark.slow
def test_export_csv(made, tmp_path, capsys):
    out = tmp_path / "trials.csv"
    assert main(["export", "--csv", str(out), "--storage", made[1]]) == 0
    assert "wrote 3 trials" in capsys.readouterr().out
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["number"]) for r in rows] == [0, 1, 2]
    for column in ("state", "value_val_dice_fg", "params_lr", "dice_bg", "dice_rv", "dice_myo", "dice_lv",
                   "dice_fg", "best_epoch", "epochs_run", "seconds", "n_params", "fail_reason"):
        assert column in rows[0], column
    assert "history" not in rows[0] and not any(c.startswith(("user_attrs_", "system_attrs_")) for c in rows[0])
    assert {r["state"] for r in rows} == {"COMPLETE"}
    assert float(rows[0]["params_lr"]) == pytest.approx(SMALL_PARAMS["lr"])


# ---------------------------------------------------------------- report


@pytest.fixture(scope="module")
def report(made):
    root, url = made
    db = root / "studies.db"
    before = db.read_bytes()
    out = root / "report.html"
    assert main(["report", "--out", str(out), "--storage", url]) == 0
    assert db.read_bytes() == before  # read-only
    return out


@pytest.mark.slow
def test_report_content(report):
    text = report.read_text()
    for section in ("optimisation-history", "learning-curves", "parameter-importances", "parallel-coordinates",
                    "best-trial", "top-10-trials", "search-space-edges", "test-evaluation", "reproduce"):
        assert f'<section id="{section}">' in text, section
    assert text.count('class="plotly-graph-div"') >= 5
    assert "Synthetic data" in text
    top = re.search(r'<table[^>]*class="[^"]*top[^"]*".*?</table>', text, re.S).group(0)
    for header in ("val dice_fg", "rv", "myo", "lv", "best epoch", "lr"):
        assert f"<th>{header}</th>" in top, header
    assert len(re.findall(r"<tr>\s*<td>", top)) == 3  # one row per complete trial
    # all three trials share depth 3, width 8: the smallest values searched
    assert "depth: the best trials sit at the lower edge" in text
    assert "base_width: the best 3 trials all use the smallest choice" in text
    assert "python -m sweep run --trials 3 --epochs 2" in text and "python -m sweep best --evaluate" in text
    reproduce = re.search(r'<section id="reproduce">.*?</section>', text, re.S).group(0)
    assert "--enqueue" in reproduce and "--seeds 3 --out best" in reproduce  # the study exactly, not a variant
    assert "depth: the best trials sit at the lower edge" in text
    assert "test Dice" in text and 'alt="test predictions" src="data:image/png;base64,' in text


@pytest.mark.slow
def test_report_is_self_contained(report):
    text = report.read_text()
    assert not re.search(r"""<script[^>]+src=["']?https?://""", text)  # plotly.js is inline
    assert not re.search(r"""<(img|link)[^>]+(src|href)=["']?https?://""", text)
    assert text.count("plotly.js v") <= 2  # embedded once, not per figure
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert images and all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in images)


def test_report_needs_no_complete_trial(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    optuna.create_study(study_name="segnet", storage=url, direction="maximize")
    assert main(["report", "--out", str(tmp_path / "r.html"), "--storage", url]) == 0
    text = (tmp_path / "r.html").read_text()
    assert "needs at least 2 complete trials" in text and "not evaluated yet" in text


# ---------------------------------------------------------------- dashboard


def _served_at(first_line: str) -> str:
    """``http://127.0.0.1:PORT`` from the dashboard's first line (started with ``--port 0``)."""
    match = re.search(r"http://127\.0\.0\.1:(\d+)/dashboard", first_line)
    assert match and int(match.group(1)) > 0, first_line
    return f"http://127.0.0.1:{match.group(1)}"


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def dashboard(made, tmp_path_factory):
    """`python -m sweep dashboard` in a subprocess on a free port; yields (base URL, study id)."""
    log = tmp_path_factory.mktemp("dashboard") / "stderr.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "w") as err:
        proc = subprocess.Popen(  # port 0: any free one, named in the first line (no race with another suite)
            [sys.executable, "-m", "sweep", "dashboard", "--port", "0", "--storage", made[1]],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True,
        )
    try:
        base = _served_at(proc.stdout.readline())  # the URL comes first
        deadline = time.monotonic() + 60
        while True:
            try:
                studies = _get_json(f"{base}/api/studies")["study_summaries"]
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"dashboard did not answer:\n{log.read_text()}")
                time.sleep(0.3)
        [study] = [s for s in studies if s["study_name"] == "segnet"]
        yield base, study["study_id"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_dashboard_api(dashboard):
    base, study_id = dashboard
    detail = _get_json(f"{base}/api/studies/{study_id}")
    assert detail["name"] == "segnet" and detail["objective_names"] == ["val_dice_fg"]
    assert len(detail["trials"]) == 3
    for trial in detail["trials"]:
        keys = {a["key"] for a in trial["user_attrs"]}
        assert {"dice_bg", "dice_rv", "dice_myo", "dice_lv", "best_epoch", "history", "worker"} <= keys
        assert len(trial["intermediate_values"]) == 2
    study_keys = {a["key"] for a in detail["user_attrs"]}
    assert {"data_fingerprint", "synthetic_data", "command", "evaluation"} <= study_keys
    assert "summary.json" in {a["filename"] for a in detail["artifacts"]}
    checkpoints = [a for t in detail["trials"] for a in t["artifacts"] if a["filename"].endswith(".pt")]
    assert checkpoints
    # the artifact store is wired: the dashboard serves the file itself
    trial_id = next(t["trial_id"] for t in detail["trials"] if checkpoints[0] in t["artifacts"])
    with urllib.request.urlopen(f"{base}/artifacts/{study_id}/{trial_id}/{checkpoints[0]['artifact_id']}", timeout=10) as r:
        assert r.status == 200 and len(r.read()) > 1000


# ---------------------------------------------------------------- in a real browser


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing on CI: apt-get install -y chromium")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    profile = tmp_path_factory.mktemp("chromium-profile")

    def run(*args: str) -> str:
        result = subprocess.run(
            [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    return run


def _text(dom: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


@pytest.mark.slow
def test_dashboard_in_browser(dashboard, browser, tmp_path):
    base, study_id = dashboard
    page = browser("--dump-dom", f"{base}/dashboard/studies/{study_id}")
    assert "main-svg" in page  # plotly drew the history and importance plots
    assert "val_dice_fg" in _text(page)
    trials = _text(browser("--dump-dom", f"{base}/dashboard/studies/{study_id}/trials"))
    for expected in ("Trial 0", "Trial 1", "Trial 2", "User Attributes", "dice_rv", "Artifacts", "_checkpoint.pt"):
        assert expected in trials, expected
    browser(f"--screenshot={tmp_path / 'dashboard.png'}", f"{base}/dashboard/studies/{study_id}")
    assert Image.open(tmp_path / "dashboard.png").size == (1400, 1000)


@pytest.mark.slow
def test_report_in_browser(report, browser):
    dom = browser("--dump-dom", report.as_uri())
    assert dom.count("js-plotly-plot") >= 5  # every figure rendered offline, from the inline plotly.js
    assert dom.count('class="main-svg"') >= 10
    assert re.search(r'<img alt="test predictions" src="data:image/png;base64,', dom)


CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def webdriver_session():
    """Debian's headless Chromium driven through its chromedriver (Selenium), with the browser's
    console log kept: what a person opening the file would see, errors included."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        if os.environ.get("CI"):
            pytest.fail("chromium or chromedriver missing on CI: apt-get install -y chromium chromium-driver")
        pytest.skip("chromium and chromedriver not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


@pytest.mark.slow
def test_report_draws_loads_and_logs_no_error_in_a_real_browser(report, webdriver_session):
    """``report.html`` opened from file: every plot draws its SVG, every image decodes, and the
    console holds no error (plotly.js inline, nothing fetched from a network)."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver = webdriver_session
    driver.get(report.as_uri())
    WebDriverWait(driver, 60).until(lambda d: d.execute_script("return document.readyState") == "complete")
    plots = driver.execute_script("return document.querySelectorAll('.js-plotly-plot').length")
    drawn = driver.execute_script(
        "return [...document.querySelectorAll('.js-plotly-plot')].filter(p => p.querySelector('svg.main-svg')).length")
    assert plots >= 5 and drawn == plots
    images = driver.execute_script("return [...document.images].map(i => [i.alt, i.complete, i.naturalWidth])")
    assert images and all(complete and width > 0 for _, complete, width in images), images
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []


def test_report_sets_the_best_trial_against_the_original_configuration(tmp_path):
    from sweep.search.space import suggest

    ORIGINAL_PARAMS = preset("original")

    url = f"sqlite:///{tmp_path / 'o.db'}"
    study = optuna.create_study(study_name="segnet", storage=url, direction="maximize")
    for params, value in ((ORIGINAL_PARAMS, 0.846), (SMALL_PARAMS, 0.9081), (VARIANTS[0], 0.5)):
        study.enqueue_trial(params)
        trial = study.ask()
        suggest(trial, 2)
        for c, v in zip(("bg", "rv", "myo", "lv"), (0.98, value, value, value)):
            trial.set_user_attr(f"dice_{c}", v)
        trial.set_user_attr("n_params", 1000)
        study.tell(trial, value)
    assert main(["report", "--out", str(tmp_path / "r.html"), "--storage", url]) == 0
    text = (tmp_path / "r.html").read_text()
    section = re.search(r'<section id="against-the-original-configuration">.*?</section>', text, re.S).group(0)
    assert "original configuration (trial 0)" in section and "best (trial 1)" in section
    assert "<td>0.8460</td>" in section and "<td>0.9081</td>" in section and "<td>+0.0621</td>" in section

    url2 = f"sqlite:///{tmp_path / 'n.db'}"
    other = optuna.create_study(study_name="segnet", storage=url2, direction="maximize")
    other.enqueue_trial(SMALL_PARAMS)
    trial = other.ask()
    suggest(trial, 2)
    other.tell(trial, 0.7)
    assert main(["report", "--out", str(tmp_path / "n.html"), "--storage", url2]) == 0
    assert "--enqueue original" in (tmp_path / "n.html").read_text()


def test_an_epoch_budget_the_best_trials_outgrew_is_an_edge_too():
    def study_with(best_epochs):
        study = optuna.create_study(direction="maximize")
        dist = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
        for i, best in enumerate(best_epochs):
            study.add_trial(optuna.trial.create_trial(value=0.9 - 0.01 * i, params={"lr": 1e-3}, distributions=dist,
                                                      user_attrs={"best_epoch": best, "epoch_budget": 50}))
        return study

    [warning] = edge_warnings(study_with([50, 47, 46, 12]))
    assert warning.startswith("epochs:") and "50 of 50, 47 of 50, 46 of 50" in warning and "--epochs" in warning
    assert edge_warnings(study_with([50, 44, 49])) == []  # one of the best peaked earlier


def test_status_and_report_do_not_show_the_storage_password(tmp_path, capsys, postgres_url):
    """A report is a file people share: the password of a --storage URL must not be in it (nor on screen)."""
    import uuid

    from sqlalchemy.engine import make_url

    from sweep.core.records import StudyKey

    url = make_url(postgres_url).set(password="s3cret-pw").render_as_string(hide_password=False)
    name = f"pw{uuid.uuid4().hex[:10]}"
    study = optuna.create_study(study_name=name, storage=url, direction="maximize")
    try:
        study.set_user_attr(StudyKey.COMMAND, f"python -m sweep run --storage {url} --study {name}")
        capsys.readouterr()
        assert main(["status", "--storage", url, "--study", name]) == 0
        assert main(["report", "--storage", url, "--study", name, "--out", str(tmp_path / "r.html")]) == 0
        assert "s3cret-pw" not in capsys.readouterr().out
        page = (tmp_path / "r.html").read_text()
        assert "s3cret-pw" not in page and "***" in page
    finally:
        optuna.delete_study(study_name=name, storage=url)


def test_a_report_on_a_study_without_artifacts_creates_no_artifacts_folder(in_tmp):
    """A view reads: a study whose trials never uploaded anything leaves no empty folder behind."""
    storage = f"sqlite:///{in_tmp / 'studies.db'}"
    study = optuna.create_study(storage=storage, study_name="segnet", direction="maximize")
    study.add_trial(optuna.trial.create_trial(params={"lr": 1e-3},
                                              distributions={"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2)},
                                              value=0.5))
    assert main(["report", "--out", "r.html"]) == 0
    assert (in_tmp / "r.html").stat().st_size > 0
    assert sorted(p.name for p in in_tmp.iterdir()) == ["r.html", "studies.db"]


def _start_dashboard(storage: str, script: str | None = None) -> tuple[subprocess.Popen, str]:
    """`python -m sweep dashboard --port 0` (or ``script`` run with its arguments) in a subprocess,
    once it answers; returns the process and its base URL."""
    command = ["-m", "sweep"] if script is None else ["-c", script]
    proc = subprocess.Popen([sys.executable, *command, "dashboard", "--port", "0", "--storage", storage],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        base = _served_at(proc.stdout.readline())
        deadline = time.monotonic() + 120  # a busy machine (a second suite beside this one) starts it slowly
        while True:  # serving: the signal ends the server, not its start-up
            try:
                _get_json(f"{base}/api/studies")
                return proc, base
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.3)
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def _stopped(proc: subprocess.Popen) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_dashboard_stopped_by_sigterm_ends_normally_without_a_rerun_line(tmp_path):
    """A server's normal end is a signal: exit 0 and one line saying so, not "interrupted; rerun with"."""
    import signal

    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    optuna.create_study(storage=storage, study_name="segnet")
    proc, _ = _start_dashboard(storage)
    proc.send_signal(signal.SIGTERM)
    out, err = _stopped(proc)
    assert proc.returncode == 0
    assert out.strip().splitlines()[-1] == "optuna-dashboard stopped"
    assert "interrupted" not in err and "rerun" not in err


# The dashboard's app, with a page during whose answer the server gets SIGTERM: wsgiref used to
# take the KeyboardInterrupt raised there for a failed request, and serve on.
SIGNALLED_MID_RESPONSE = """
import os, signal, sys
import optuna_dashboard._app as dashboard_app

create_app = dashboard_app.create_app

def app_with_a_signalled_page(*args, **kwargs):
    app = create_app(*args, **kwargs)

    def wrapped(environ, start_response):
        if environ["PATH_INFO"] != "/signalled":
            return app(environ, start_response)
        start_response("200 OK", [("Content-Type", "text/plain")])
        os.kill(os.getpid(), signal.SIGTERM)  # delivered here, while the answer is being written
        return [b"answered"]

    return wrapped

dashboard_app.create_app = app_with_a_signalled_page
from sweep.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_the_dashboard_stops_on_a_sigterm_that_arrives_while_it_answers(tmp_path):
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    optuna.create_study(storage=storage, study_name="segnet")
    proc, base = _start_dashboard(storage, SIGNALLED_MID_RESPONSE)
    with urllib.request.urlopen(f"{base}/signalled", timeout=30) as response:
        assert response.read() == b"answered"  # the request in hand is answered whole
    out, err = _stopped(proc)
    assert proc.returncode == 0, err
    assert out.strip().splitlines()[-1] == "optuna-dashboard stopped"
    assert "Traceback" not in err
