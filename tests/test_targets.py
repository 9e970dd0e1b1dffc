import numpy as np
import pytest
import torch
from matplotlib.colors import rgb_to_hsv
from scipy import ndimage

from engine.train.targets import (
    MultitaskTargets,
    NoColourBands,
    boundary_targets,
    colour_targets,
    distance_targets,
    euclidean_distance_transform,
    make_targets,
)

N = 4
IGNORE = 255
CROSS = ndimage.generate_binary_structure(2, 1)


def _blob_masks(seed: int, batch: int = 3, shape: tuple[int, int] = (37, 45)) -> np.ndarray:
    """Smooth random regions of N classes, an ignored blob and scattered ignored pixels;
    image 1 lacks class 3; image 2 is class 0 everywhere except ignored pixels."""
    rng = np.random.default_rng(seed)
    fields = ndimage.gaussian_filter(rng.normal(size=(batch, N, *shape)), sigma=(0, 0, 3, 3))
    masks = fields.argmax(axis=1).astype(np.uint8)
    masks[1][masks[1] == 3] = 1
    masks[2] = 0
    ignored = ndimage.gaussian_filter(rng.normal(size=(batch, *shape)), sigma=(0, 4, 4)) > 0.12
    ignored |= rng.random((batch, *shape)) < 0.02
    masks[ignored] = IGNORE
    assert (masks[0][masks[0] != IGNORE] == 3).any()
    return masks


def _ref_boundary(mask: np.ndarray, c: int) -> np.ndarray:
    fg = mask == c
    ignored = mask == IGNORE
    dilated = ndimage.binary_dilation(fg, CROSS, border_value=0)
    eroded = ndimage.binary_erosion(fg | ignored, CROSS, border_value=1)
    return ((dilated ^ eroded) & ~ignored).astype(np.float64)


def _ref_distance(mask: np.ndarray, c: int) -> np.ndarray:
    fg = mask == c
    sources = (mask != IGNORE) & ~fg
    if not sources.any():
        return fg.astype(np.float64)
    d = ndimage.distance_transform_edt(~sources)
    d[~fg] = 0
    return d / d.max() if d.max() > 0 else d


def test_boundary_matches_scipy_on_blobs():
    masks = _blob_masks(0)
    out = boundary_targets(torch.from_numpy(masks), N, IGNORE)
    assert out.shape == (3, N, *masks.shape[1:]) and out.dtype == torch.float32
    for b in range(masks.shape[0]):
        for c in range(N):
            np.testing.assert_array_equal(out[b, c].numpy(), _ref_boundary(masks[b], c))
    assert out[0].sum() > 0


def test_boundary_definition_by_hand():
    mask = torch.zeros(1, 6, 6, dtype=torch.uint8)
    mask[0, 2:4, 2:5] = 1
    mask[0, 0, 0] = IGNORE  # ignored corner: no edge, target 0
    mask[0, 5, :] = 1  # touches the image border: no edge along the border itself
    expected_1 = torch.tensor(
        [
            [0, 0, 0, 0, 0, 0],
            [0, 0, 1, 1, 1, 0],
            [0, 1, 1, 1, 1, 1],
            [0, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1],
        ],
        dtype=torch.float32,
    )
    out = boundary_targets(mask, 2, IGNORE)
    assert torch.equal(out[0, 1], expected_1)
    # Class 0 is the complement on valid pixels, so its band is the same set.
    expected_0 = expected_1.clone()
    assert torch.equal(out[0, 0], expected_0)


@pytest.mark.parametrize("shape", [(23, 23), (17, 40), (40, 17)])
def test_edt_matches_scipy(shape):
    rng = np.random.default_rng(1)
    sources = rng.random((4, *shape)) < np.array([0.002, 0.02, 0.3, 0.0])[:, None, None]
    sources[0, 3, 5] = True
    out = euclidean_distance_transform(torch.from_numpy(sources))
    for b in range(3):
        ref = ndimage.distance_transform_edt(~sources[b])
        np.testing.assert_allclose(out[b].numpy(), ref, rtol=1e-6, atol=1e-6)
    assert torch.isinf(out[3]).all()


def test_edt_small_chunks_give_the_same_result(monkeypatch):
    import engine.train.targets as targets

    sources = torch.rand(2, 30, 20, generator=torch.Generator().manual_seed(3)) < 0.05
    full = euclidean_distance_transform(sources)
    monkeypatch.setattr(targets, "_EDT_CHUNK_ELEMENTS", 7 * 20 * 20)
    assert torch.equal(euclidean_distance_transform(sources), full)


def test_distance_matches_scipy_on_blobs():
    masks = _blob_masks(2)
    out = distance_targets(torch.from_numpy(masks), N, IGNORE)
    assert out.shape == (3, N, *masks.shape[1:]) and out.dtype == torch.float32
    for b in range(masks.shape[0]):
        for c in range(N):
            np.testing.assert_allclose(
                out[b, c].numpy(), _ref_distance(masks[b], c), rtol=1e-6, atol=1e-6
            )
    assert out.min() >= 0 and out.max() <= 1
    # Min-max per image and class: every present class that has a background peaks at 1.
    assert torch.allclose(out[0].amax(dim=(-2, -1)), torch.ones(N))
    assert (out[1, 3] == 0).all()  # absent class
    valid = torch.from_numpy(masks[2] != IGNORE)
    assert torch.equal(out[2, 0], valid.float())  # class covering every valid pixel


def test_colour_matches_matplotlib_hsv():
    rgb = torch.rand(2, 3, 9, 13, generator=torch.Generator().manual_seed(4))
    rgb[0, :, 0, :] = 0.5  # grey pixels: hue 0, saturation 0
    out = colour_targets(rgb)
    ref = rgb_to_hsv(rgb.permute(0, 2, 3, 1).numpy().astype(np.float64))
    ref = torch.from_numpy(ref).permute(0, 3, 1, 2).float()
    hue_diff = (out[:, 0] - ref[:, 0]).abs()
    hue_diff = torch.minimum(hue_diff, 1 - hue_diff)  # hue is circular
    assert hue_diff.max() < 1e-5
    torch.testing.assert_close(out[:, 1:], ref[:, 1:], atol=1e-5, rtol=0)
    assert out.min() >= 0 and out.max() <= 1


def test_make_targets_shapes():
    masks = torch.from_numpy(_blob_masks(5, shape=(16, 16)))
    images = torch.rand(3, 3, 16, 16)
    t = make_targets(images, masks, N, IGNORE)
    assert isinstance(t, MultitaskTargets)
    assert t.segmentation.dtype == torch.int64 and torch.equal(t.segmentation, masks.long())
    assert t.boundary.shape == t.distance.shape == (3, N, 16, 16)
    assert t.colour.shape == (3, 3, 16, 16)
    assert all(x.dtype == torch.float32 for x in (t.boundary, t.distance, t.colour))


def test_colour_target_comes_from_the_rgb_bands_clamped():
    """A 5-band unit-scale image (e.g. nir, blue, green, red, swir; not uint8, so values may
    leave [0, 1]): the colour target is the HSV of bands (3, 2, 1) clamped to [0, 1]."""
    masks = torch.from_numpy(_blob_masks(2, shape=(16, 16)))
    unit = torch.rand(2, 5, 16, 16, generator=torch.Generator().manual_seed(8)) * 1.6 - 0.3
    t = make_targets(unit, masks, N, IGNORE, rgb_bands=(3, 2, 1))
    expected = colour_targets(unit[:, [3, 2, 1]].clamp(0, 1))
    assert torch.equal(t.colour, expected)
    assert not torch.equal(t.colour, colour_targets(unit[:, :3].clamp(0, 1)))
    rgb = torch.rand(2, 3, 16, 16)
    assert torch.equal(make_targets(rgb, masks, N, IGNORE).colour, colour_targets(rgb))


def test_colour_target_without_rgb_bands_is_refused():
    masks = torch.from_numpy(_blob_masks(1, shape=(16, 16)))
    with pytest.raises(NoColourBands, match="rgb_bands: null"):
        make_targets(torch.rand(1, 2, 16, 16), masks, N, IGNORE, rgb_bands=None)
