"""Palettes, overlays, panels, confusion heatmaps, history plots, and the show/plot scripts."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.render.colors import ERROR_COLORS, class_info, colorize, error_map, hex_to_rgb, overlay
from engine.render.figures import Display, confusion_heatmap, legend_image, mask_figure, panel
from engine.render.history_plots import plot_history

REPO = Path(__file__).resolve().parents[1]
NAMES = ["Water", "Land (unpaved area)", "Road", "Building"]
PALETTE = ["#50E3C2", "#F5A623", "#DE597F", "#D0021B"]


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_hex_to_rgb():
    assert hex_to_rgb("#50E3C2") == (0x50, 0xE3, 0xC2)
    assert hex_to_rgb("d0021b") == (208, 2, 27)
    assert hex_to_rgb("#fff") == (255, 255, 255)
    assert hex_to_rgb((1, 2, 3)) == (1, 2, 3)
    for bad in ("#12345", "#GGGGGG", (1, 2), (0, 0, 256)):
        with pytest.raises(ValueError):
            hex_to_rgb(bad)


def test_colorize_is_exact():
    mask = np.array([[0, 1, 2], [3, 255, 0]], np.uint8)
    out = colorize(mask, PALETTE, ignore_index=255, ignore_color=(9, 8, 7))
    expected = np.array(
        [
            [[0x50, 0xE3, 0xC2], [0xF5, 0xA6, 0x23], [0xDE, 0x59, 0x7F]],
            [[0xD0, 0x02, 0x1B], [9, 8, 7], [0x50, 0xE3, 0xC2]],
        ],
        np.uint8,
    )
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(colorize(mask.astype(np.int64), PALETTE)[1, 1], [0, 0, 0])
    with pytest.raises(ValueError, match=r"mask values \[7\]"):
        colorize(np.array([[7]]), PALETTE)
    with pytest.raises(ValueError, match="integer"):
        colorize(np.zeros((2, 2), np.float32), PALETTE)


def test_overlay_and_error_map():
    image = np.full((2, 2, 3), 100, np.uint8)
    rendered = np.full((2, 2, 3), 200, np.uint8)
    assert (overlay(image, rendered, 0.25) == 125).all()
    assert (overlay(image, rendered, 0.0) == 100).all()
    truth = np.array([[0, 1], [255, 2]], np.uint8)
    pred = np.array([[0, 2], [1, 2]], np.uint8)
    errors = error_map(truth, pred)
    assert tuple(errors[0, 0]) == ERROR_COLORS["correct"]
    assert tuple(errors[0, 1]) == ERROR_COLORS["wrong"]
    assert tuple(errors[1, 0]) == ERROR_COLORS["ignored"]


def _scene(height=120, width=160):
    yy, xx = np.mgrid[0:height, 0:width]
    truth = ((xx // 40 + yy // 40) % 4).astype(np.uint8)
    truth[:10] = 255
    pred = truth.copy()
    pred[np.random.default_rng(0).random(pred.shape) < 0.2] = 2
    pred[:10] = 0
    image = np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1).astype(np.uint8)
    return image, truth, pred


def test_panel_is_written_with_expected_size(tmp_path):
    image, truth, pred = _scene()
    path = tmp_path / "panel.png"
    pixels = panel(
        image, truth, pred, NAMES, PALETTE, path, title="val 0", display=Display(dpi=100)
    )
    width, height = png_size(path)
    assert (width, height) == (1600, pixels.shape[0])  # four 4-inch panels at 100 dpi
    assert path.stat().st_size > 10_000
    assert pixels.std() > 10  # not blank
    two = panel(image, truth, None, NAMES, PALETTE, tmp_path / "two.png")
    assert two.shape[1] == 800
    with pytest.raises(ValueError, match="does not match"):
        panel(image, truth[:5], pred, NAMES, PALETTE)


def test_mask_figure_and_legend(tmp_path):
    image, truth, _ = _scene()
    pixels = mask_figure(truth, NAMES, PALETTE, tmp_path / "mask.png", image=image)
    assert png_size(tmp_path / "mask.png") == (1800, pixels.shape[0])
    legend = legend_image(NAMES, PALETTE, tmp_path / "legend.png")
    assert legend.shape[0] > 100 and (tmp_path / "legend.png").stat().st_size > 2000


def test_confusion_heatmap_is_written(tmp_path):
    cm = np.array([[50, 5, 0, 0], [10, 80, 10, 0], [0, 0, 0, 0], [1, 2, 3, 94]])
    path = tmp_path / "cm.png"
    pixels = confusion_heatmap(cm, NAMES, path, dpi=100)
    assert png_size(path) == (pixels.shape[1], pixels.shape[0])
    assert pixels.shape[1] >= 4 * 100 and pixels.shape[0] >= 4 * 100
    with pytest.raises(ValueError, match="does not match"):
        confusion_heatmap(cm, NAMES[:3], None)


def _write_history(path: Path, columns: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def test_plot_history_reads_the_columns_present(tmp_path):
    # the trainer's columns (engine.train.history); cells not written for a split stay blank
    columns = ["step", "epoch", "split", "time_s", "lr", "loss", "grad_norm", "miou"]
    columns += ["loss/segmentation", "loss/boundary"] + [f"iou/{n}" for n in NAMES]
    rows = []
    for step in range(0, 1000, 50):
        rows.append(
            {
                "step": step,
                "split": "train",
                "loss": 2 * np.exp(-step / 300),
                "lr": 1e-3 * (1 - step / 1000),
                "loss/segmentation": 1.5 * np.exp(-step / 300),
                "loss/boundary": 0.5 * np.exp(-step / 200),
            }
        )
        if step % 200 == 0:
            row = {
                "step": step,
                "split": "val",
                "loss": 2.2 * np.exp(-step / 400),
                "miou": 0.8 * (1 - np.exp(-step / 300)),
            }
            row.update(
                {
                    f"iou/{n}": 0.9 * (1 - np.exp(-step / (200 + 50 * i)))
                    for i, n in enumerate(NAMES)
                }
            )
            rows.append(row)
    _write_history(tmp_path / "history.csv", columns, rows)
    written = plot_history(tmp_path / "history.csv", tmp_path / "plots")
    assert [p.name for p in written] == [
        "loss.png", "lr.png", "miou.png", "iou_per_class.png", "loss_terms.png"
    ]  # fmt: skip
    for path in written:
        width, height = png_size(path)
        assert width >= 600 and height >= 400 and path.stat().st_size > 10_000


def test_plot_history_skips_absent_columns(tmp_path):
    _write_history(
        tmp_path / "h.csv",
        ["epoch", "loss", "note"],
        [{"epoch": i, "loss": 1 / (i + 1), "note": "x"} for i in range(5)],
    )
    written = plot_history(tmp_path / "h.csv", tmp_path / "out")
    assert [p.name for p in written] == ["loss.png"]
    _write_history(tmp_path / "empty.csv", ["step", "loss"], [])
    assert plot_history(tmp_path / "empty.csv", tmp_path / "out2") == []
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        plot_history(tmp_path / "missing.csv", tmp_path)


def test_class_info_from_manifest_and_classes_file(tmp_path):
    from engine.data.sources.classes import classes_from_dict

    manifest = {"classes": [{"name": n, "color": c} for n, c in zip(NAMES, PALETTE)]}
    assert class_info(manifest) == (NAMES, PALETTE)
    classes = classes_from_dict(
        {
            "encoding": "rgb",
            "classes": [
                {"name": "a", "value": "#010203"},
                {"name": "z", "value": "#000000", "ignore": True},
            ],
        }
    )
    assert class_info(None, classes) == (["a"], ["#010203"])


def _run_script(monkeypatch, name: str, argv: list[str]) -> int:
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "launch" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [name, *argv])
    return module.main(argv)


@pytest.mark.slow
def test_show_script_renders_a_shard_sample_and_masks(tmp_path, monkeypatch):
    from engine.data.build.builder import BuildOptions, build_shards
    from engine.data.sources.classes import load_classes
    from engine.data.sources.pairing import pair_by_glob
    from engine.data.synthetic.scenes import write_dataset

    data = write_dataset(
        tmp_path / "data", num_groups=3, scenes_per_group=1, size=(96, 128), nodata_fraction=0.0
    )
    pairs = pair_by_glob(str(data / "*/images/*.jpg"), str(data / "*/masks/*.png"), r"^(Scene \d+)")
    classes = load_classes(data / "classes.yaml")
    build_shards(
        pairs,
        classes,
        tmp_path / "shards",
        BuildOptions(tile=64, val=0.34, test=0.0, samples_per_shard=2),
    )
    manifest = json.loads((tmp_path / "shards" / "dataset.json").read_text())
    out = tmp_path / "sample.png"
    code = _run_script(
        monkeypatch,
        "show",
        ["--shards", str(tmp_path / "shards"), "--split", "val", "--index", "3", "--out", str(out)],
    )
    assert code == 0 and png_size(out)[0] == 800  # image | truth
    mask = np.zeros((64, 80), np.uint8)
    mask[:, 40:] = 1
    Image.fromarray(mask).save(tmp_path / "m_mask.png")
    out = tmp_path / "mask_view.png"
    code = _run_script(
        monkeypatch,
        "show",
        [str(tmp_path / "m_mask.png"), "--classes", str(data / "classes.yaml"), "--out", str(out)],
    )
    assert code == 0 and png_size(out)[0] == 600
    image = next(iter(sorted(data.glob("*/images/*.jpg"))))
    truth = data / image.parent.parent.name / "masks" / f"{image.stem}.png"
    pred = tmp_path / "p_mask.png"
    Image.fromarray(np.zeros((96, 128), np.uint8)).save(pred)
    out = tmp_path / "panel.png"
    code = _run_script(
        monkeypatch,
        "show",
        [
            "--image",
            str(image),
            "--truth",
            str(truth),
            "--prediction",
            str(pred),
            "--classes",
            str(data / "classes.yaml"),
            "--out",
            str(out),
        ],
    )
    assert code == 0 and png_size(out)[0] == 1600
    assert len(manifest["classes"]) == len(classes.classes)
    code = _run_script(
        monkeypatch,
        "show",
        [
            "--shards",
            str(tmp_path / "shards"),
            "--split",
            "val",
            "--index",
            "999",
            "--out",
            str(out),
        ],
    )
    assert code == 2


def test_plot_history_script(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    _write_history(
        run / "history.csv",
        ["step", "split", "loss"],
        [{"step": i, "split": "train", "loss": 1 / (i + 1)} for i in range(10)],
    )
    (run / "metrics.json").write_text(json.dumps({"val": {"confusion_matrix": [[5, 1], [2, 7]]}}))
    assert _run_script(monkeypatch, "plot_history", [str(run)]) == 0
    # Into the run folder, where the trainer writes its plots (plot_history(history, run)).
    assert sorted(p.name for p in run.iterdir()) == [
        "confusion_val.png", "history.csv", "loss.png", "metrics.json"
    ]  # fmt: skip
    assert _run_script(monkeypatch, "plot_history", [str(tmp_path / "nowhere")]) == 2


@pytest.mark.parametrize(
    ("metrics", "warning"),
    [
        ([[5, 1], [2, 7]], "metrics.json: not a JSON object; no heatmap"),
        ({"val": {"confusion_matrix": [[5, "x"], [2, 7]]}}, "val matrix is not square"),
        ({"val": {"confusion_matrix": [[5, 1]]}}, "val matrix is not square"),
        ({"confusion_matrix": [[5, 1], [2, 7]], "per_class": 5}, None),
        ({"confusion_matrix": [[5, 1], [2, 7]], "per_class": [{"name": 1}, {"name": 2}]}, None),
    ],
)
def test_plot_history_script_survives_odd_metrics(tmp_path, monkeypatch, capsys, metrics, warning):
    run = tmp_path / "run"
    run.mkdir()
    _write_history(
        run / "history.csv", ["step", "split", "loss"], [{"step": 0, "split": "train", "loss": 1.0}]
    )
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert _run_script(monkeypatch, "plot_history", [str(run)]) == 0
    err = capsys.readouterr().err
    if warning is None:
        assert (run / "confusion_metrics.png").is_file() and "warning" not in err
    else:
        assert warning in err and not list(run.glob("confusion_*.png"))


def test_per_class_iou_uses_the_palette_and_best_rows_are_stars(tmp_path):
    from matplotlib.collections import PathCollection
    from matplotlib.colors import to_hex

    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    colors = ["#12AB34", "#C01DEA", "#0F0F70", "#707000"]
    manifest = {"classes": [{"name": n, "color": c} for n, c in zip(NAMES, colors)]}
    (run / "best" / "dataset.json").write_text(json.dumps(manifest))
    columns = ["step", "split", "miou"] + [f"iou/{n}" for n in NAMES]
    rows = [
        {"step": s, "split": "val", "miou": s / 100, **{f"iou/{n}": s / 90 for n in NAMES}}
        for s in (10, 20, 30)
    ]
    rows.append({"step": 20, "split": "test@best", "miou": 0.5, **{f"iou/{n}": 0.4 for n in NAMES}})
    _write_history(run / "history.csv", columns, rows)
    figures = {}
    written = plot_history(run / "history.csv", run, figures=figures)
    assert [p.name for p in written] == ["miou.png", "iou_per_class.png"]
    assert not list(run.glob("*.partial"))

    (ax,) = figures["miou.png"].axes
    assert [line.get_label() for line in ax.lines] == ["val"]  # the best row is not a line
    (star,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert star.get_label() == "test@best" and star.get_offsets().tolist() == [[20.0, 0.5]]
    assert any("test@best 0.5" in text.get_text() for text in ax.texts)

    test, val = figures["iou_per_class.png"].axes  # a panel per split; test@best on test
    assert val.get_title() == "Per-class IoU (val)" and test.get_title() == "Per-class IoU (test)"
    line_colors = {line.get_label(): to_hex(line.get_color()).upper() for line in val.lines}
    assert line_colors == dict(zip(NAMES, colors))
    assert not test.lines and not [c for c in val.collections if isinstance(c, PathCollection)]
    stars = [c for c in test.collections if isinstance(c, PathCollection)]
    assert len(stars) == len(NAMES)
    assert sorted(to_hex(c.get_facecolor()[0]).upper() for c in stars) == sorted(colors)
