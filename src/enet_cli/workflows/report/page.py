"""The report's HTML: one file, its figures beside it in figures/, no script, no font and
nothing fetched from anywhere (it opens from disk, offline). Every number it shows comes
from the evaluation's metrics (`enet evaluate`'s); the per-class table carries the exact
values in data-value attributes."""

import datetime
import html
from typing import Any, Dict, List, Optional, Sequence

from enet_cli.workflows.report.collect import RunRecord, flatten

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 0 auto;
       padding: 1rem 1.5rem; color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem;
  border-bottom: 1px solid #ddd; } h3 { font-size: 1rem; }
table { border-collapse: collapse; margin: .5rem 0; font-size: .9rem; }
th, td { border: 1px solid #ddd; padding: .2rem .5rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
td.differs { background: #fff3c4; }
img { max-width: 100%; height: auto; }
.note { color: #666; font-size: .9rem; }
.strip { margin: .4rem 0 1rem; }
.strip img { width: 100%; image-rendering: pixelated; }
details { margin: .5rem 0; } summary { cursor: pointer; font-weight: 600; }
code { font-size: .85rem; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pct(value: Optional[float]) -> str:
    return "-" if value is None or value != value else f"{100 * value:.1f}"


def img(src: str, alt: str) -> str:
    return f'<img src="{esc(src)}" alt="{esc(alt)}">'


def _table(head: Sequence[str], rows: List[str], table_id: str = "") -> str:
    ident = f' id="{table_id}"' if table_id else ""
    cells = "".join(f"<th>{esc(h)}</th>" for h in head)
    return f"<table{ident}><thead><tr>{cells}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _value_cell(value: Optional[float]) -> str:
    exact = "nan" if value is None or value != value else repr(float(value))
    return f'<td data-value="{exact}">{_pct(value)}</td>'


def summary_table(runs: List[RunRecord], metrics: Dict[str, Dict[str, Any]]) -> str:
    rows = []
    for run in runs:
        m = metrics[run.label]
        best = run.best_epoch
        rows.append(
            f'<tr data-run="{esc(run.label)}"><td>{esc(run.label)}</td>'
            f"{_value_cell(m['mean_iou'])}{_value_cell(m['pixel_accuracy'])}"
            f"{_value_cell(m['class_accuracy'])}<td>{m['images']}</td>"
            f"<td>{esc(best if best is not None else '-')}</td>"
            f"<td>{m['ms_per_image']:.1f}</td><td class='model'>{esc(m['model'])}</td></tr>"
        )
    head = ("run", "mean IoU %", "pixel acc. %", "class acc. %", "images", "best epoch",
            "ms/image", "model")  # fmt: skip
    return _table(head, rows, "summary")


def per_class_table(names: Sequence[str], metrics: Dict[str, Dict[str, Any]], share) -> str:
    """Per class and run: IoU and accuracy (exact values in data-value), and the class's
    share of the training pixels."""
    labels = list(metrics)
    head = ["class", *(f"{label} IoU %" for label in labels)]
    head += [f"{label} acc. %" for label in labels]
    head.append("train pixels %")
    rows = []
    for n, name in enumerate(names):
        cells = "".join(_value_cell(metrics[label]["iou"].get(name)) for label in labels)
        cells += "".join(_value_cell(metrics[label]["accuracy"].get(name)) for label in labels)
        cells += f"<td>{_pct(share[n]) if share is not None else '-'}</td>"
        rows.append(f'<tr data-class="{esc(name)}"><td>{esc(name)}</td>{cells}</tr>')
    return _table(head, rows, "per-class")


def settings_section(runs: List[RunRecord], manifest_summary: Dict[str, Any], own) -> str:
    """The runs' settings side by side (the ones that differ marked, and listed first when
    there are several runs), the data, and where each run and this report ran."""
    parts = []
    flat = {run.label: flatten(run.settings) for run in runs}
    keys = sorted({k for values in flat.values() for k in values})
    recorded = [run for run in runs if run.settings]  # a model alone recorded none

    def differs(key: str) -> bool:
        return len({flat[r.label].get(key, "-") for r in recorded}) > 1

    if len(recorded) > 1:
        rows = [
            f"<tr><td>{esc(k)}</td>"
            + "".join(f"<td>{esc(flat[r.label].get(k, '-'))}</td>" for r in runs)
            + "</tr>"
            for k in keys
            if differs(k)
        ]
        parts.append("<h3>Settings that differ</h3>")
        if rows:
            parts.append(_table(["setting", *[r.label for r in runs]], rows, "differences"))
        else:
            parts.append('<p class="note">The runs\' settings are the same.</p>')
    if keys:
        rows = []
        for k in keys:
            values = [flat[r.label].get(k, "-") for r in runs]
            mark = ' class="differs"' if differs(k) else ""
            rows.append(
                f"<tr><td>{esc(k)}</td>" + "".join(f"<td{mark}>{esc(v)}</td>" for v in values)
            )
        table = _table(["setting", *[r.label for r in runs]], rows, "settings")
        parts.append(f"<details><summary>All settings (config.json)</summary>{table}</details>")
    rows = [f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in manifest_summary.items()]
    data = _table(["data", ""], rows, "data")
    parts.append(f"<details><summary>Data (manifest.json)</summary>{data}</details>")
    for run in runs:
        if run.environment:
            rows = [
                f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>"
                for k, v in flatten(run.environment).items()
            ]
            table = _table(["", ""], rows)
            parts.append(
                f"<details><summary>Where {esc(run.label)} trained</summary>{table}</details>"
            )
    rows = [f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in flatten(own).items()]
    table = _table(["", ""], rows)
    parts.append(f"<details><summary>Where this report was made</summary>{table}</details>")
    return "\n".join(parts)


def page(
    title: str,
    intro: str,
    sections: List[str],
) -> str:
    made = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = "\n".join(sections)
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{esc(title)}</h1><p class='note'>{intro} Made {made} by enet report.</p>"
        f"{body}</body></html>\n"
    )
