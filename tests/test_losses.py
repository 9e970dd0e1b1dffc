from collections import namedtuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.train.loss_factory import build_loss, class_weights_from_pixels
from engine.train.losses import (
    CombinedLoss,
    CrossEntropyLoss,
    DiceLoss,
    MultitaskLoss,
    TanimotoLoss,
    tanimoto_with_complement,
)
from engine.train.targets import make_targets

N = 4
IGNORE = 255
Heads = namedtuple("Heads", "segmentation boundary distance colour")


def _batch(seed: int, shape=(3, N, 7, 9)):
    """Logits and targets with ignored pixels; class 3 never occurs in the targets."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g) * 2
    target = torch.randint(0, N - 1, (shape[0], *shape[2:]), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.25] = IGNORE
    return logits, target


def _ref_tanimoto_term(p, l, eps):  # noqa: E741
    """T(p, l) per sample, straight from the formula, float64 with loops."""
    B, C = p.shape[:2]
    V = np.array([np.mean([l[b, j].sum() for b in range(B)]) for j in range(C)])
    with np.errstate(divide="ignore"):
        w = V**-2.0
    finite = np.isfinite(w)
    w[~finite] = w[finite].max() if finite.any() else 0.0
    out = []
    for b in range(B):
        num = sum(w[j] * (p[b, j] * l[b, j]).sum() for j in range(C))
        den = sum(w[j] * (p[b, j] ** 2 + l[b, j] ** 2 - p[b, j] * l[b, j]).sum() for j in range(C))
        out.append((num + eps) / (den + eps))
    return np.array(out)


def _ref_tanimoto_loss(p, l, valid, eps=1e-5):  # noqa: E741
    p, l, valid = (np.asarray(x, dtype=np.float64) for x in (p, l, valid))  # noqa: E741
    t = _ref_tanimoto_term(p * valid, l * valid, eps)
    t_dual = _ref_tanimoto_term((1 - p) * valid, (1 - l) * valid, eps)
    return float(np.mean(1 - (t + t_dual) / 2))


def _one_hot(target):
    valid = (target != IGNORE).unsqueeze(1)
    one_hot = F.one_hot(torch.where(valid[:, 0], target, 0), N).permute(0, 3, 1, 2)
    return (one_hot * valid).numpy(), valid.numpy()


def test_tanimoto_matches_float64_reference():
    logits, target = _batch(0)
    loss = TanimotoLoss(N, IGNORE)(logits, target)
    labels, valid = _one_hot(target)
    probs = logits.double().softmax(1).numpy()
    assert loss.item() == pytest.approx(_ref_tanimoto_loss(probs, labels, valid), rel=1e-5)


def test_tanimoto_soft_labels_match_reference():
    g = torch.Generator().manual_seed(1)
    probs = torch.rand(2, 3, 6, 5, generator=g)
    labels = torch.rand(2, 3, 6, 5, generator=g)
    labels[:, 1] = 0  # an all-zero channel: infinite weight replaced
    valid = (torch.rand(2, 1, 6, 5, generator=g) > 0.3).float()
    loss = tanimoto_with_complement(probs, labels, valid)
    ref = _ref_tanimoto_loss(probs.numpy(), labels.numpy(), valid.numpy())
    assert loss.item() == pytest.approx(ref, rel=1e-5)
    assert loss.item() > 0.01


def test_tanimoto_near_zero_for_perfect_prediction():
    _, target = _batch(2)
    labels = F.one_hot(torch.where(target == IGNORE, 0, target), N).permute(0, 3, 1, 2)
    loss = TanimotoLoss(N, IGNORE)(labels.float() * 40, target)
    assert 0 <= loss.item() < 1e-4


@pytest.mark.parametrize(
    "make_loss",
    [
        lambda: TanimotoLoss(N, IGNORE),
        lambda: CrossEntropyLoss(torch.tensor([1.0, 2.0, 0.5, 1.0]), IGNORE, 0.1),
        lambda: DiceLoss(N, IGNORE),
    ],
    ids=["tanimoto", "ce", "dice"],
)
def test_ignored_pixels_change_nothing_and_gradients_are_finite(make_loss):
    loss_fn = make_loss()
    logits, target = _batch(3)
    ignored = (target == IGNORE).unsqueeze(1).expand_as(logits)
    assert ignored.any()
    logits.requires_grad_(True)
    loss = loss_fn(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert (logits.grad[ignored] == 0).all()
    assert logits.grad[~ignored].abs().sum() > 0
    changed = logits.detach().clone()
    changed[ignored] = torch.randn(int(ignored.sum())) * 100
    assert loss_fn(changed, target).item() == loss.item()


def test_extreme_logits_give_finite_gradients():
    logits, target = _batch(4)
    logits = (logits * 100).requires_grad_(True)
    for loss_fn in (TanimotoLoss(N, IGNORE), DiceLoss(N, IGNORE), CrossEntropyLoss()):
        logits.grad = None
        loss = loss_fn(logits, target)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_cross_entropy_matches_manual_reference_with_weights():
    logits, target = _batch(5)
    weight = torch.tensor([0.5, 2.0, 1.0, 3.0])
    loss = CrossEntropyLoss(weight, IGNORE)(logits, target)
    log_p = logits.double().log_softmax(1)
    valid = target != IGNORE
    safe = torch.where(valid, target, 0)
    nll = -log_p.gather(1, safe.unsqueeze(1))[:, 0]
    w = weight.double()[safe] * valid
    assert loss.item() == pytest.approx(((w * nll).sum() / w.sum()).item(), rel=1e-6)


def test_cross_entropy_label_smoothing_matches_torch_and_survives_all_ignored():
    logits, target = _batch(6)
    weight = torch.tensor([0.5, 2.0, 1.0, 3.0])
    ours = CrossEntropyLoss(weight, IGNORE, label_smoothing=0.2)(logits, target)
    ref = F.cross_entropy(logits, target, weight, ignore_index=IGNORE, label_smoothing=0.2)
    torch.testing.assert_close(ours, ref)
    empty = torch.full_like(target, IGNORE)
    assert CrossEntropyLoss(weight, IGNORE)(logits, empty).item() == 0.0


def test_dice_perfect_is_zero_and_wrong_is_large():
    _, target = _batch(7)
    labels = F.one_hot(torch.where(target == IGNORE, 0, target), N).permute(0, 3, 1, 2).float()
    dice = DiceLoss(N, IGNORE, smooth=1.0)
    assert dice(labels * 40, target).item() < 1e-3
    wrong = labels.roll(1, dims=1) * 40
    assert dice(wrong, target).item() > 0.5


def _multitask_inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    _, target = _batch(seed, shape=(2, N, 12, 12))
    images = torch.rand(2, 3, 12, 12, generator=g)
    targets = make_targets(images, target, N, IGNORE)
    outputs = Heads(
        *(torch.randn(2, c, 12, 12, generator=g).requires_grad_(True) for c in (N, N, N, 3))
    )
    return outputs, targets


def test_multitask_loss_is_mean_of_heads_and_backprops():
    outputs, targets = _multitask_inputs(8)
    loss_fn = MultitaskLoss(N, IGNORE)
    terms = loss_fn.terms(outputs, targets)
    loss = loss_fn(outputs, targets)
    assert set(terms) == {"segmentation", "boundary", "distance", "colour"}
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, torch.stack(list(terms.values())).mean())
    valid = (targets.segmentation != IGNORE).unsqueeze(1).float()
    expected_colour = _ref_tanimoto_loss(
        outputs.colour.detach().double().sigmoid().numpy(), targets.colour.numpy(), valid.numpy()
    )
    assert terms["colour"].item() == pytest.approx(expected_colour, rel=1e-5)
    loss.backward()
    for head in outputs:
        assert torch.isfinite(head.grad).all() and head.grad.abs().sum() > 0
    # A dict of targets is accepted too.
    as_dict = dict(targets._asdict())
    assert loss_fn(outputs, as_dict).item() == pytest.approx(loss.item())


def test_multitask_ignores_ignored_pixels():
    outputs, targets = _multitask_inputs(9)
    ignored = targets.segmentation == IGNORE
    assert ignored.any()
    loss_fn = MultitaskLoss(N, IGNORE)
    before = loss_fn(outputs, targets).item()
    changed = []
    for head in outputs:
        head = head.detach().clone()
        head[ignored.unsqueeze(1).expand_as(head)] = 37.0
        changed.append(head)
    changed_targets = targets._replace(colour=targets.colour.masked_fill(ignored.unsqueeze(1), 0.3))
    assert loss_fn(Heads(*changed), changed_targets).item() == before


def test_build_loss_forms_agree():
    logits, target = _batch(10)
    weights = torch.tensor([1.0, 2.0, 0.5, 1.0])
    ce = CrossEntropyLoss(weights, IGNORE, label_smoothing=0.1)(logits, target)
    dice = DiceLoss(N, IGNORE)(logits, target)
    expected = ce + 0.5 * dice
    specs = [
        {"name": "ce+dice", "weights": {"dice": 0.5}, "label_smoothing": 0.1},
        [{"name": "cross_entropy", "label_smoothing": 0.1}, {"name": "dice", "weight": 0.5}],
        {"terms": [{"name": "ce", "label_smoothing": 0.1}, {"name": "dice", "weight": 0.5}]},
    ]
    for spec in specs:
        loss_fn = build_loss(spec, N, IGNORE, class_weights=weights)
        assert isinstance(loss_fn, CombinedLoss)
        torch.testing.assert_close(loss_fn(logits, target), expected)
    unweighted = build_loss([{"name": "ce", "class_weighted": False}], N, IGNORE, weights)
    reference = F.cross_entropy(logits, target, ignore_index=IGNORE)
    torch.testing.assert_close(unweighted(logits, target), reference)
    assert isinstance(build_loss("tanimoto", N), CombinedLoss)
    assert isinstance(build_loss({"name": "multitask"}, N), MultitaskLoss)


@pytest.mark.parametrize(
    "spec",
    [
        "focal",
        {"name": "ce+lovasz"},
        {"name": "ce", "smooth": 1.0},
        {"name": "ce", "weights": {"dice": 1.0}},
        [{"name": "dice", "label_smoothing": 0.1}],
        "multitask+ce",
        [],
    ],
)
def test_build_loss_rejects_bad_specs(spec):
    with pytest.raises(ValueError):
        build_loss(spec, N)


def test_class_weights_from_pixels():
    pixels = [100, 0, 400, 25]
    f = np.array([100, 400, 25]) / 525
    inv = class_weights_from_pixels(pixels, "inverse")
    expected = np.zeros(4)
    expected[[0, 2, 3]] = (1 / f) / np.mean(1 / f)
    np.testing.assert_allclose(inv.numpy(), expected, rtol=1e-6)
    sqrt = class_weights_from_pixels({"a": 100, "b": 0, "c": 400, "d": 25})
    expected[[0, 2, 3]] = f**-0.5 / np.mean(f**-0.5)
    np.testing.assert_allclose(sqrt.numpy(), expected, rtol=1e-6)
    median = class_weights_from_pixels(pixels, "median_freq")
    expected[[0, 2, 3]] = np.median(f) / f
    np.testing.assert_allclose(median.numpy(), expected, rtol=1e-6)
    assert median.dtype == torch.float32
    with pytest.raises(ValueError):
        class_weights_from_pixels(pixels, "log")
    with pytest.raises(ValueError):
        class_weights_from_pixels([0, 0])


def test_losses_are_registered_like_architectures():
    from engine.train.loss_factory import is_multitask_spec, list_losses, register_loss

    assert list_losses() == ["ce", "dice", "multitask", "tanimoto"]
    assert is_multitask_spec("multitask") and is_multitask_spec({"name": "multitask", "eps": 1})
    assert not is_multitask_spec("ce+dice")
    with pytest.raises(ValueError, match="already registered"):
        register_loss("cross_entropy")(lambda *a: None)
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        build_loss("ce+focal", 3)
