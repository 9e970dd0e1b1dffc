import pytest
import torch

from engine.data.normalize import normalize
from engine.train.augment import TrainAugment

IGNORE = 255
MEAN = (0.3, 0.4, 0.5)
STD = (0.2, 0.25, 0.3)


def _encoded_batch(batch: int, height: int, width: int, seed: int = 0):
    """Masks of random classes (and ignore); the image encodes, per pixel, the mask value
    (red), the row (green) and the column (blue), so any misalignment is detectable."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.randint(0, 6, (batch, height, width), generator=g, dtype=torch.uint8)
    masks[torch.rand(masks.shape, generator=g) < 0.1] = IGNORE
    rows = torch.arange(height, dtype=torch.uint8).view(1, -1, 1).expand_as(masks)
    cols = torch.arange(width, dtype=torch.uint8).view(1, 1, -1).expand_as(masks)
    images = torch.stack([masks, rows, cols], dim=1).contiguous()
    return images, masks


def _dihedral(x: torch.Tensor, t: int) -> torch.Tensor:
    x = torch.rot90(x, t % 4, dims=(-2, -1))
    return x.flip(-1) if t >= 4 else x


def _check_sample(raw: torch.Tensor, mask: torch.Tensor, source_mask: torch.Tensor) -> int:
    """Check one output against its source tile; return the dihedral transform that maps
    the output back to an upright window of the source."""
    pixels = torch.round(raw * 255).long()
    assert torch.allclose(raw * 255, pixels.float(), atol=1e-4)  # no jitter: exact values
    red, row, col = pixels
    padding = (pixels.sum(0) == 0) & (mask == IGNORE)
    real = ~padding
    assert (raw[:, padding] == 0).all()
    # Every real pixel carries the mask value of the source pixel it came from.
    assert torch.equal(mask[real], source_mask[row[real], col[real]].long())
    assert torch.equal(red[real], mask[real])
    for t in range(8):
        r, c, keep = _dihedral(row, t), _dihedral(col, t), _dihedral(real, t)
        ii, jj = torch.nonzero(keep, as_tuple=True)
        if (r[keep] - ii).unique().numel() == 1 and (c[keep] - jj).unique().numel() == 1:
            return t
    raise AssertionError("output is not a dihedral transform of a window of the source")


def test_outputs_stay_aligned_and_are_windows_of_the_tile():
    images, masks = _encoded_batch(16, 48, 40)
    aug = TrainAugment(crop_size=24, mean=MEAN, std=STD, seed=0)
    out, out_masks, raw = aug(images, masks, return_raw=True)
    assert out.shape == raw.shape == (16, 3, 24, 24) and out.dtype == torch.float32
    assert out_masks.shape == (16, 24, 24) and out_masks.dtype == torch.int64
    assert set(out_masks.unique().tolist()) <= set(masks.unique().tolist())
    transforms = [_check_sample(raw[b], out_masks[b], masks[b]) for b in range(16)]
    assert (out_masks == IGNORE).any()  # ignore survives
    assert len(set(transforms)) >= 4  # flips and rotations really happen
    corners = {(int(raw[b, 1].min() * 255), int(raw[b, 2].min() * 255)) for b in range(16)}
    assert len(corners) > 8  # per-sample crop positions


def test_no_flips_or_rotations_when_disabled():
    images, masks = _encoded_batch(6, 30, 30)
    aug = TrainAugment(crop_size=16, mean=MEAN, std=STD, hflip=False, vflip=False, rot90=False)
    _, out_masks, raw = aug(images, masks, return_raw=True)
    assert [_check_sample(raw[b], out_masks[b], masks[b]) for b in range(6)] == [0] * 6


def test_tile_smaller_than_crop_is_padded_with_ignore():
    images, masks = _encoded_batch(8, 20, 14)
    aug = TrainAugment(crop_size=32, mean=MEAN, std=STD, seed=1)
    _, out_masks, raw = aug(images, masks, return_raw=True)
    assert out_masks.shape == (8, 32, 32)
    for b in range(8):
        _check_sample(raw[b], out_masks[b], masks[b])
        # Padding (black and ignored; no source pixel is both) surrounds the whole tile.
        padding = (raw[b].sum(0) == 0) & (out_masks[b] == IGNORE)
        assert int((~padding).sum()) == 20 * 14
    offsets = {tuple(torch.nonzero(out_masks[b] != IGNORE)[0].tolist()) for b in range(8)}
    assert len(offsets) > 1  # the tile lands at different places


def test_fresh_crops_each_call_and_reproducible_with_seed():
    images, masks = _encoded_batch(4, 64, 64)
    aug = TrainAugment(crop_size=32, mean=MEAN, std=STD, seed=7)
    first = aug(images, masks)
    second = aug(images, masks)
    assert not torch.equal(first[1], second[1])
    again = TrainAugment(crop_size=32, mean=MEAN, std=STD, seed=7)
    assert torch.equal(again(images, masks)[0], first[0])
    gen = TrainAugment(crop_size=32, mean=MEAN, std=STD, generator=torch.Generator().manual_seed(7))
    assert torch.equal(gen(images, masks)[1], first[1])


@pytest.mark.parametrize("height, width, crop", [(48, 40, 24), (20, 14, 32)])
def test_channels_last_input_gives_the_same_crops(height, width, crop):
    images, masks = _encoded_batch(8, height, width)
    channels_last = images.contiguous(memory_format=torch.channels_last)
    assert not channels_last.is_contiguous()  # the loader's layout, not a copy of NCHW
    jitter = {"brightness": 0.2, "hue": 0.05}
    plain = TrainAugment(crop, MEAN, STD, jitter=jitter, seed=3)(images, masks, return_raw=True)
    strided = TrainAugment(crop, MEAN, STD, jitter=jitter, seed=3)(
        channels_last, masks, return_raw=True
    )
    for a, b in zip(plain, strided):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_normalize_and_identity_augment():
    images, masks = _encoded_batch(2, 16, 16)
    expected = (images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(
        STD
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(normalize(images, MEAN, STD), expected)
    aug = TrainAugment(16, MEAN, STD, hflip=False, vflip=False, rot90=False)
    out, out_masks, raw = aug(images, masks, return_raw=True)
    torch.testing.assert_close(out, expected)
    assert torch.equal(out_masks, masks.long())
    torch.testing.assert_close(raw, images.float() / 255)


def test_jitter_changes_image_only():
    images, masks = _encoded_batch(4, 40, 40)
    images = torch.randint(0, 256, images.shape, generator=torch.Generator().manual_seed(3))
    images = images.to(torch.uint8)
    jitter = {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.05}
    plain = TrainAugment(24, MEAN, STD, seed=5)(images, masks, return_raw=True)
    jittered = TrainAugment(24, MEAN, STD, jitter=jitter, seed=5)(images, masks, return_raw=True)
    assert torch.equal(plain[1], jittered[1])
    assert (plain[2] - jittered[2]).abs().mean() > 0.01
    assert jittered[2].min() >= 0 and jittered[2].max() <= 1
    torch.testing.assert_close(jittered[0], normalize(jittered[2], MEAN, STD))
    never = TrainAugment(24, MEAN, STD, jitter={**jitter, "p": 0.0}, seed=5)
    torch.testing.assert_close(never(images, masks)[0], plain[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"jitter": {"gamma": 0.1}},
        {"jitter": {"hue": 0.7}},
        {"jitter": {"brightness": 0.2, "p": 1.5}},
        {"seed": 1, "generator": torch.Generator()},
        {"crop_size": 0},
    ],
)
def test_invalid_configuration(kwargs):
    with pytest.raises(ValueError):
        TrainAugment(**{"mean": MEAN, "std": STD, **kwargs})
