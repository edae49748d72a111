"""`enet report`: the page, its figures, its numbers (evaluate's), in a real browser."""

import json
import re
import shutil
from html.parser import HTMLParser

import numpy as np
from PIL import Image

from enet_testing import invoke, read_records


class Parsed(HTMLParser):
    """The page's images, its tables' rows (cells with their data-value) and its text."""

    def __init__(self, text: str):
        super().__init__()
        self.images, self.rows, self.text = [], {}, []
        self._table, self._row, self._cell = None, None, None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag == "table":
            self._table = attrs.get("id")
            self.rows.setdefault(self._table, [])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = [attrs.get("data-value"), ""]
            self._row.append(self._cell)

    def handle_endtag(self, tag):
        if tag == "tr" and self._row is not None:
            self.rows[self._table].append([(value, text.strip()) for value, text in self._row])
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data
        self.text.append(data)


def _float(value: str) -> float:
    return float("nan") if value == "nan" else float(value)


def _same(a: float, b) -> bool:
    b = float("nan") if b is None else float(b)
    return (a != a and b != b) or a == b


def test_report_of_a_run_its_numbers_are_evaluates_and_its_page_loads_offline(
    trained_run, small_data, tmp_path, browser, screenshots
):
    out = tmp_path / "report"
    made = invoke("report", trained_run, "--data", small_data, "--out", out, "--examples", "3")
    assert made.returncode == 0, made.stderr
    assert "scoring run on val: 8/8 images" in made.stderr
    assert f"report written to {out / 'report.html'}" in made.stderr
    page = Parsed((out / "report.html").read_text())

    # Every picture it shows is beside it and decodes.
    assert len(page.images) == 3 + 2 * 3  # curves, per-class, confusion, 3 lowest, 3 highest
    for src in page.images:
        assert not src.startswith(("/", "http:", "https:", "file:")) and ".." not in src
        with Image.open(out / src) as picture:
            picture.load()
            assert picture.width > 0 and picture.height > 0

    # Its numbers are enet evaluate's, exactly.
    evaluated = invoke("evaluate", trained_run, small_data, "--split", "val", "--json",
                       tmp_path / "val.json")  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    expected = json.loads((tmp_path / "val.json").read_text())
    rows = {row[0][1]: row for row in page.rows["per-class"][1:]}
    assert list(rows) == list(expected["iou"])
    for name, row in rows.items():
        iou, accuracy = _float(row[1][0]), _float(row[2][0])
        assert _same(iou, expected["iou"][name]) and _same(accuracy, expected["accuracy"][name])
    (summary,) = page.rows["summary"][1:]
    assert _same(_float(summary[1][0]), expected["mean_iou"])
    assert _same(_float(summary[2][0]), expected["pixel_accuracy"])
    saved = json.loads((out / "metrics_1.json").read_text())
    assert saved["iou"] == expected["iou"] and saved["confusion"] == expected["confusion"]
    history = json.loads((trained_run / "metrics.json").read_text())["history"]
    best = max(history, key=lambda e: e["val_mean_iou"])["epoch"]
    assert summary[5][1] == str(best)

    # The image strips: the lowest IoUs first, each strip's truth panel is that record's
    # labels in the class colours.
    text = "".join(page.text)
    shown = [line.split(": mean IoU ") for line in text.splitlines() if ": mean IoU " in line]
    lowest = [float(v.rstrip("%")) for _, v in shown[:3]]
    highest = [float(v.rstrip("%")) for _, v in shown[3:]]
    assert lowest == sorted(lowest) and highest == sorted(highest, reverse=True)
    assert max(lowest) <= min(highest)
    from enet_cli.workflows.report.figures import CAPTION

    records = read_records(small_data, "val")
    manifest = json.loads((small_data / "manifest.json").read_text())
    colours = np.array([c["color"] for c in manifest["classes"]] + [manifest["void_color"]])
    from enet_cli.core.metrics import count_confusion, segmentation_metrics
    from enet_cli.serving.runtimes import load_predictor

    predictor = load_predictor(trained_run)
    for (name, said), src in zip(shown, page.images[3:]):
        image, label = records[name.strip()]
        strip = np.asarray(Image.open(out / src).convert("RGB"))
        height, width = label.shape
        assert np.array_equal(strip[CAPTION:, :width], image)
        truth = strip[CAPTION : CAPTION + height, width + 4 : 2 * width + 4]
        assert np.array_equal(truth, colours[label].astype(np.uint8)), name
        # its IoU, by predict's path this time
        classes = predictor.run(image[None], logits=False)[1][0]
        matrix = count_confusion(label, classes, len(colours) - 1, len(colours) - 1)
        assert f"{100 * segmentation_metrics(matrix)['mean_iou']:.1f}%" == said.strip(), name
    # Where the run trained: training records it in metrics.json.
    environment = json.loads((trained_run / "metrics.json").read_text())["environment"]
    assert environment["machine"]["cores"] >= 1 and "enet-cli" in environment["versions"]
    assert "Where run trained" in text

    # In a real browser, from disk: every image drawn, nothing asked of anywhere else.
    tab = browser.new_page(viewport={"width": 1200, "height": 900})
    requested = []
    tab.on("request", lambda request: requested.append(request.url))
    tab.goto((out / "report.html").as_uri())
    tab.wait_for_load_state("load")
    sizes = tab.eval_on_selector_all("img", "all => all.map(i => [i.naturalWidth, i.complete])")
    assert len(sizes) == len(page.images) and all(w > 0 and done for w, done in sizes)
    assert requested and all(url.startswith(out.as_uri() + "/") for url in requested), requested
    tab.screenshot(path=str(screenshots / "report_page.png"), full_page=False)
    tab.close()


def test_report_compares_runs_and_leaves_out_what_needs_a_history(
    trained_run, untrained_exports, small_data, tmp_path
):
    other = tmp_path / "lr-study"
    shutil.copytree(trained_run, other, ignore=shutil.ignore_patterns(".enet.lock"))
    config = json.loads((other / "config.json").read_text())
    trained_lr = config["train"]["learning_rate"]
    config["train"]["learning_rate"] = 0.01
    (other / "config.json").write_text(json.dumps(config))
    out = tmp_path / "report"
    model = untrained_exports["saved_model"]
    made = invoke("report", trained_run, other, model, "--data", small_data, "--out", out,
                  "--examples", "0", "--split", "test")  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "no training history in saved_model (not a run directory)" in made.stderr
    page = Parsed((out / "report.html").read_text())
    assert [row[0][1] for row in page.rows["summary"][1:]] == ["run", "lr-study", "saved_model"]
    # The settings that differ between the runs that recorded theirs: the learning rate.
    differ = {row[0][1]: [cell[1] for cell in row[1:]] for row in page.rows["differences"][1:]}
    assert differ == {"train.learning_rate": [str(trained_lr), "0.01", "-"]}
    assert "Left out (no training history): saved_model" in "".join(page.text)
    assert len(page.rows["per-class"][0]) == 1 + 3 + 3 + 1  # class, IoU x3, acc. x3, share
    assert sorted(p.name for p in (out / "figures").iterdir()) == [
        "confusion_1.png", "confusion_2.png", "confusion_3.png", "curves.png",
        "per_class_iou.png",
    ]  # fmt: skip


def test_report_refusals_are_one_line_and_write_nothing(
    trained_run, small_data, tmp_path, monkeypatch
):
    out = tmp_path / "report"
    cases = [
        (["--split", "nope"], 3, "--split"),
        (["--out", trained_run / "report"], 2, "--out .* the input"),
    ]
    for extra, code, pattern in cases:
        args = ["report", trained_run, "--data", small_data, "--out", out, *extra]
        failed = invoke(*args)
        assert failed.returncode == code, failed.stderr
        (line,) = failed.stderr.strip().splitlines()
        assert re.search(pattern, line), line
    twice = invoke("report", trained_run, trained_run, "--data", small_data, "--out", out)
    assert twice.returncode == 2 and "the same run is given twice" in twice.stderr
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    taken = invoke("report", trained_run, "--data", small_data, "--out", mine)
    assert taken.returncode == 2 and "is not the output of enet report" in taken.stderr
    assert (mine / "notes.txt").read_text() == "keep"

    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # not installed
    missing = invoke("report", trained_run, "--data", small_data, "--out", out)
    assert missing.returncode == 6
    assert missing.stderr.strip().splitlines() == [
        "error: enet report draws with matplotlib, which is not installed: pip install "
        "'enet-cli[report]'"
    ]
    assert not out.exists() and not any(p.name.startswith(".report") for p in tmp_path.iterdir())
