import json
import math
import socket
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    jaccard_score,
    precision_recall_fscore_support,
)

from engine.evaluate.metrics import ConfusionMatrix, SegmentationMetrics, metrics_from_confusion

N = 6
IGNORE = 255


def _batches(seed: int, count: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Truth in {0..3} (+ ignore), predictions in {0..4}: class 4 is predicted but never
    true, class 5 appears nowhere."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        target = torch.randint(0, 4, (2, 9, 11), generator=g)
        target[torch.rand(target.shape, generator=g) < 0.2] = IGNORE
        # Mostly correct predictions so the scores are not all near chance.
        pred = torch.where(
            torch.rand(target.shape, generator=g) < 0.6,
            target.clamp(max=4),
            torch.randint(0, 5, target.shape, generator=g),
        )
        out.append((pred.to(torch.uint8), target.to(torch.uint8)))
    return out


def _flat_valid(batches):
    pred = torch.cat([p.reshape(-1) for p, _ in batches]).numpy().astype(int)
    true = torch.cat([t.reshape(-1) for _, t in batches]).numpy().astype(int)
    keep = true != IGNORE
    return true[keep], pred[keep]


def test_matches_sklearn_over_accumulated_batches():
    batches = _batches(0)
    cm = ConfusionMatrix(N, ignore_index=IGNORE)
    for pred, target in batches:
        cm.update(pred, target)
    y_true, y_pred = _flat_valid(batches)
    labels = list(range(N))

    np.testing.assert_array_equal(
        cm.matrix.numpy(), confusion_matrix(y_true, y_pred, labels=labels)
    )
    assert cm.matrix.dtype == torch.int64

    m = cm.compute()
    # jaccard_score only offers 0 or 1 for an empty union; ours is NaN (class 5 only).
    iou = jaccard_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    iou[5] = np.nan
    p, r, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=np.nan
    )
    np.testing.assert_allclose(m.iou, iou, equal_nan=True)
    np.testing.assert_allclose(m.precision, p, equal_nan=True)
    np.testing.assert_allclose(m.recall, r, equal_nan=True)
    np.testing.assert_allclose(m.f1, f1, equal_nan=True)
    np.testing.assert_array_equal(m.support, support)
    assert m.overall_accuracy == pytest.approx(accuracy_score(y_true, y_pred))
    assert m.kappa == pytest.approx(cohen_kappa_score(y_true, y_pred))
    assert m.miou == pytest.approx(np.nanmean(iou))
    # Means of precision/recall/F1: scikit-learn's macro average over the classes in truth.
    in_truth = sorted(set(y_true.tolist()))
    mp, mr, mf, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=in_truth, average="macro", zero_division=0
    )
    assert m.mean_precision == pytest.approx(mp)
    assert m.mean_recall == pytest.approx(mr)
    assert m.mean_f1 == pytest.approx(mf)
    assert m.total == len(y_true)
    # Class 4 is predicted but never true: IoU 0 (in the mean), recall undefined.
    assert m.iou[4] == 0.0 and math.isnan(m.recall[4])
    # Class 5 is absent from truth and prediction: undefined, left out of the means.
    assert math.isnan(m.iou[5]) and math.isnan(m.f1[5])


def test_means_count_a_class_never_predicted_as_zero_like_sklearn():
    # Four classes in truth; the model only ever predicts 0 and 1 (2 and 3 never predicted).
    y_true = np.array([0] * 40 + [1] * 30 + [2] * 20 + [3] * 10)
    y_pred = y_true.copy()
    y_pred[y_true == 2] = 0
    y_pred[y_true == 3] = 1
    y_pred[:4] = 1
    cm = confusion_matrix(y_true, y_pred, labels=[0, 1, 2, 3, 4])
    m = SegmentationMetrics.from_confusion(cm)
    p, r, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=[0, 1, 2, 3], average="macro", zero_division=0
    )
    assert m.mean_precision == pytest.approx(p) and m.mean_precision < 0.5
    assert m.mean_recall == pytest.approx(r)
    assert m.mean_f1 == pytest.approx(f1)
    # Per class, a never-predicted class still has an undefined (NaN) precision.
    assert math.isnan(m.precision[2]) and math.isnan(m.precision[4])


def test_repeated_pairs_accumulate():
    cm = ConfusionMatrix(3)
    target = torch.full((2, 4, 5), 1)
    pred = torch.full((2, 4, 5), 2)
    cm.update(pred, target)
    cm.update(pred, target)
    expected = torch.zeros(3, 3, dtype=torch.int64)
    expected[1, 2] = 80  # rows = truth, columns = prediction
    assert torch.equal(cm.matrix, expected)
    cm.reset()
    assert cm.matrix.sum() == 0


def test_out_of_range_targets_and_custom_ignore_are_not_counted():
    cm = ConfusionMatrix(3, ignore_index=0)
    target = torch.tensor([[[0, 1, 2, 7]]])
    pred = torch.tensor([[[1, 1, 0, 2]]])
    cm.update(pred, target)
    expected = torch.zeros(3, 3, dtype=torch.int64)
    expected[1, 1] = 1
    expected[2, 0] = 1
    assert torch.equal(cm.matrix, expected)


def test_metrics_from_confusion_is_json_with_names():
    batches = _batches(1)
    cm = ConfusionMatrix(N, class_names=[f"c{i}" for i in range(N)])
    for pred, target in batches:
        cm.update(pred, target)
    out = metrics_from_confusion(cm.matrix, cm.class_names)
    text = json.dumps(out, allow_nan=False)
    assert json.loads(text) == out
    for key in ("miou", "mean_f1", "overall_accuracy", "kappa", "per_class"):
        assert key in out
    assert [row["name"] for row in out["per_class"]] == [f"c{i}" for i in range(N)]
    assert set(out["per_class"][0]) >= {"name", "iou", "precision", "recall", "f1", "support"}
    assert out["per_class"][5]["iou"] is None
    assert out["miou"] == pytest.approx(cm.compute().miou)
    assert out == cm.compute().to_dict()
    assert isinstance(cm.compute(), SegmentationMetrics)


def test_empty_matrix_is_all_undefined():
    out = metrics_from_confusion(np.zeros((3, 3), dtype=np.int64))
    assert out["miou"] is None and out["overall_accuracy"] is None and out["kappa"] is None
    assert out["mean_precision"] is None and out["mean_f1"] is None


def test_all_reduce_with_reduce_fn():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([[[0, 1]]]), torch.tensor([[[0, 0]]]))
    cm.all_reduce(lambda t: t * 3)
    assert cm.matrix.tolist() == [[3, 3], [0, 0]]


def test_all_reduce_without_process_group_is_a_no_op():
    assert not dist.is_initialized()
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([[[1]]]), torch.tensor([[[1]]]))
    assert cm.all_reduce().matrix.tolist() == [[0, 0], [0, 1]]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gloo_worker(rank: int, world_size: int, port: int, result_path: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=30),  # fail rather than hang if a peer dies
    )
    try:
        pred, target = _batches(seed=10 + rank, count=1)[0]
        cm = ConfusionMatrix(N)
        cm.update(pred, target)
        cm.all_reduce()
        if rank == 0:
            torch.save(cm.matrix, result_path)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_all_reduce_sums_across_two_gloo_processes(tmp_path):
    result = tmp_path / "cm.pt"
    # fork, not spawn: re-importing torch in two fresh processes takes most of 20 s on a
    # loaded 2-core machine; the parent has no CUDA context and fork is what DataLoader uses.
    mp.start_processes(
        _gloo_worker, args=(2, _free_port(), str(result)), nprocs=2, start_method="fork"
    )
    expected = ConfusionMatrix(N)
    for rank in range(2):
        expected.update(*_batches(seed=10 + rank, count=1)[0])
    reduced = torch.load(result)
    assert reduced.sum() > 0
    assert torch.equal(reduced, expected.matrix)
