import math

import pytest
import torch

from engine.data.shards.normalize import BandStats, Normalization, normalize
from engine.train.augment import TrainAugment

IGNORE = 255
MEAN = (0.3, 0.4, 0.5)
STD = (0.2, 0.25, 0.3)
NORM = Normalization.from_manifest({"mean": MEAN, "std": STD})  # 3 uint8 bands, 0-1 stats


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
    aug = TrainAugment(crop_size=24, normalization=NORM, seed=0)
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
    aug = TrainAugment(crop_size=16, normalization=NORM, hflip=False, vflip=False, rot90=False)
    _, out_masks, raw = aug(images, masks, return_raw=True)
    assert [_check_sample(raw[b], out_masks[b], masks[b]) for b in range(6)] == [0] * 6


def test_tile_smaller_than_crop_is_padded_with_ignore():
    images, masks = _encoded_batch(8, 20, 14)
    aug = TrainAugment(crop_size=32, normalization=NORM, seed=1)
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
    aug = TrainAugment(crop_size=32, normalization=NORM, seed=7)
    first = aug(images, masks)
    second = aug(images, masks)
    assert not torch.equal(first[1], second[1])
    again = TrainAugment(crop_size=32, normalization=NORM, seed=7)
    assert torch.equal(again(images, masks)[0], first[0])
    gen = TrainAugment(crop_size=32, normalization=NORM, generator=torch.Generator().manual_seed(7))
    assert torch.equal(gen(images, masks)[1], first[1])


@pytest.mark.parametrize("height, width, crop", [(48, 40, 24), (20, 14, 32)])
def test_channels_last_input_gives_the_same_crops(height, width, crop):
    images, masks = _encoded_batch(8, height, width)
    channels_last = images.contiguous(memory_format=torch.channels_last)
    assert not channels_last.is_contiguous()  # the loader's layout, not a copy of NCHW
    jitter = {"brightness": 0.2, "hue": 0.05}
    plain = TrainAugment(crop, NORM, jitter=jitter, seed=3)(images, masks, return_raw=True)
    strided = TrainAugment(crop, NORM, jitter=jitter, seed=3)(channels_last, masks, return_raw=True)
    for a, b in zip(plain, strided):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_normalize_and_identity_augment():
    images, masks = _encoded_batch(2, 16, 16)
    expected = (images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(
        STD
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(normalize(images, NORM), expected)
    aug = TrainAugment(16, NORM, hflip=False, vflip=False, rot90=False)
    out, out_masks, raw = aug(images, masks, return_raw=True)
    torch.testing.assert_close(out, expected)
    assert torch.equal(out_masks, masks.long())
    torch.testing.assert_close(raw, images.float() / 255)


def test_jitter_changes_image_only():
    images, masks = _encoded_batch(4, 40, 40)
    images = torch.randint(0, 256, images.shape, generator=torch.Generator().manual_seed(3))
    images = images.to(torch.uint8)
    jitter = {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.05}
    plain = TrainAugment(24, NORM, seed=5)(images, masks, return_raw=True)
    jittered = TrainAugment(24, NORM, jitter=jitter, seed=5)(images, masks, return_raw=True)
    assert torch.equal(plain[1], jittered[1])
    assert (plain[2] - jittered[2]).abs().mean() > 0.01
    assert jittered[2].min() >= 0 and jittered[2].max() <= 1
    torch.testing.assert_close(jittered[0], NORM.standardize_unit(jittered[2]))
    never = TrainAugment(24, NORM, jitter={**jitter, "p": 0.0}, seed=5)
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
        TrainAugment(**{"normalization": NORM, **kwargs})


def test_invalid_normalization_and_band_count():
    with pytest.raises(TypeError, match="Normalization"):
        TrainAugment(16, (0.5, 0.5, 0.5))
    images, masks = _encoded_batch(2, 16, 16)
    with pytest.raises(ValueError, match=r"\[B, 5, H, W\]"):
        TrainAugment(16, _bands("uint16", 5))(images, masks)


def _former_pipeline(images, seed, crop, jitter):
    """The pre-N-band augmentation, spelled out: uint8 / 255, kornia jitter, (x - m) / s.

    Geometry is the identity (crop = tile, no flips or rotations), so only the draws' order
    matters: top, left, k, flip_h, flip_v, then apply, brightness, contrast, saturation, hue.
    """
    from kornia.enhance import (
        adjust_brightness_accumulative,
        adjust_contrast_with_mean_subtraction,
        adjust_hue,
        adjust_saturation_with_gray_subtraction,
    )

    batch = images.shape[0]
    g = torch.Generator().manual_seed(seed)
    draws = [torch.rand(batch, generator=g) for _ in range(10)][5:]
    apply = draws[0] < 1.0

    def factor(u, s, identity, hue=False):
        lo, hi = (-s, s) if hue else (max(0.0, 1 - s), 1 + s)
        return torch.where(apply, lo + (hi - lo) * u, identity)

    raw = images.float() / 255.0
    raw = adjust_brightness_accumulative(raw, factor(draws[1], jitter["brightness"], 1.0))
    raw = adjust_contrast_with_mean_subtraction(raw, factor(draws[2], jitter["contrast"], 1.0))
    raw = adjust_saturation_with_gray_subtraction(raw, factor(draws[3], jitter["saturation"], 1.0))
    hue = factor(draws[4], jitter["hue"], 0.0, hue=True) * (2 * math.pi)
    raw = adjust_hue(raw, hue).clamp(0.0, 1.0)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (MEAN, STD))
    return (raw - mean) / std, raw


def test_three_band_uint8_equals_the_former_pipeline_exactly():
    g = torch.Generator().manual_seed(11)
    images = torch.randint(0, 256, (6, 3, 32, 32), generator=g, dtype=torch.uint8)
    masks = torch.randint(0, 6, (6, 32, 32), generator=g, dtype=torch.uint8)
    jitter = {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.05}
    aug = TrainAugment(32, NORM, hflip=False, vflip=False, rot90=False, jitter=jitter, seed=4)
    out, out_masks, raw = aug(images, masks, return_raw=True)
    want, want_raw = _former_pipeline(images, 4, 32, jitter)
    assert torch.equal(raw, want_raw)
    torch.testing.assert_close(out, want, atol=1e-6, rtol=0)
    assert torch.equal(out_masks, masks.long())


def _bands(dtype, count, nodata=None, rgb=None, display=(1000.0, 5000.0)):
    bands = tuple(
        BandStats(f"b{i}", dtype, 2000.0 + 100 * i, 500.0 + 10 * i, display, nodata)
        for i in range(count)
    )
    return Normalization(bands, rgb)


@pytest.mark.parametrize("dtype", ["uint16", "int16", "float32"])
def test_multiband_native_values_stay_aligned_and_nodata_becomes_zero(dtype):
    """5 bands at native precision: band 0 carries the mask value, bands 1/2 the row and
    column (scaled into the display range), so alignment is checked through the unit scale."""
    images8, masks = _encoded_batch(8, 40, 36, seed=2)
    scale = {"uint16": 20, "int16": 20, "float32": 20.5}[dtype]
    native = images8.double() * scale + 1000
    extra = torch.full_like(native[:, :2], 3000)
    native = torch.cat([native, extra], 1).to(getattr(torch, dtype))
    nodata = -9999 if dtype != "uint16" else 0
    native[:, 3, 10:30, 10:26] = nodata  # inside every 24-pixel crop of the 40x36 tile
    norm = _bands(dtype, 5, nodata=nodata, rgb=(2, 1, 0))
    out, out_masks, raw = TrainAugment(24, norm, seed=0)(native, masks, return_raw=True)
    assert out.shape == raw.shape == (8, 5, 24, 24) and out.dtype == torch.float32
    lo, span = norm.unit_scale()
    values = raw[:, :3] * span[0] + lo[0]  # back to native units
    pixels = torch.round((values - 1000) / scale).long()
    torch.testing.assert_close(values, pixels.double().float() * scale + 1000, atol=2e-3, rtol=0)
    for b in range(8):
        _check_sample(pixels[b].float() / 255.0, out_masks[b], masks[b])
    missing = out[:, 3].abs() < 1e-6  # nodata enters as the band's mean: 0 once standardised
    assert missing.flatten(1).any(1).all() and not missing.all()
    mean_u = (norm.bands[3].mean - lo[3]) / span[3]
    torch.testing.assert_close(raw[:, 3][missing], torch.full_like(raw[:, 3][missing], mean_u))
    torch.testing.assert_close(raw[:, 3][~missing], torch.full_like(raw[:, 3][~missing], 0.5))
    torch.testing.assert_close(out[:, :3], norm.standardize_unit(raw)[:, :3])


def test_jitter_per_band_without_rgb_bands_and_no_clamp_beyond_uint8():
    g = torch.Generator().manual_seed(5)
    native = torch.randint(0, 9000, (4, 4, 32, 32), generator=g).to(torch.uint16)
    masks = torch.zeros(4, 32, 32, dtype=torch.uint8)
    norm = _bands("uint16", 4, rgb=None)  # display 1000..5000: unit values reach ~2
    fixed = {"hflip": False, "vflip": False, "rot90": False, "seed": 9}
    plain = TrainAugment(32, norm, **fixed)(native, masks, return_raw=True)[2]
    colour = {"saturation": 0.5, "hue": 0.2}
    assert torch.equal(
        TrainAugment(32, norm, jitter=colour, **fixed)(native, masks, True)[2], plain
    )
    bright = TrainAugment(32, norm, jitter={"brightness": 0.4}, **fixed)(native, masks, True)[2]
    factor = (bright / plain).flatten(1).nanmedian(1).values.view(-1, 1, 1, 1)
    torch.testing.assert_close(bright, plain * factor)  # one factor per sample, every band
    assert not torch.allclose(factor, torch.ones_like(factor))
    assert plain.max() > 1.5 and bright.max() > 1.2  # not clamped to [0, 1]
    contrast = TrainAugment(32, norm, jitter={"contrast": (0.0, 0.0)}, **fixed)
    flat = contrast(native, masks, True)[2]
    torch.testing.assert_close(flat, plain.mean((-2, -1), keepdim=True).expand_as(flat))


def test_hue_and_saturation_act_on_rgb_bands_only():
    g = torch.Generator().manual_seed(6)
    native = torch.randint(0, 256, (4, 4, 32, 32), generator=g, dtype=torch.uint8)
    masks = torch.zeros(4, 32, 32, dtype=torch.uint8)
    bands = tuple(BandStats(n, "uint8", 100.0, 50.0, (0.0, 255.0)) for n in "nrgb")
    norm = Normalization(bands, (1, 2, 3))  # band 0 (nir) is no colour
    fixed = {"hflip": False, "vflip": False, "rot90": False, "seed": 2}
    plain = TrainAugment(32, norm, **fixed)(native, masks, True)[2]
    jittered = TrainAugment(32, norm, jitter={"saturation": 0.5, "hue": 0.2}, **fixed)(
        native, masks, True
    )[2]
    assert torch.equal(jittered[:, 0], plain[:, 0])
    assert (jittered[:, 1:] - plain[:, 1:]).abs().mean() > 0.01
    assert jittered.min() >= 0 and jittered.max() <= 1


def _offsets_of(raw: torch.Tensor, mask: torch.Tensor) -> tuple[int, int]:
    """(top, left) of an upright crop of an encoded tile (green = row, blue = column)."""
    pixels = torch.round(raw * 255).long()
    return int(pixels[1].min()), int(pixels[2].min())


def test_crops_stay_inside_the_labelled_part_of_a_padded_edge_tile():
    """The builder pads an edge tile with ignore; crops never waste pixels on that padding,
    and every position inside the labelled part stays reachable."""
    images, masks = _encoded_batch(400, 48, 40, seed=3)
    masks[:, 30:], masks[:, :, 26:] = IGNORE, IGNORE  # 30 x 26 of image, the rest padding
    images[:, :, 30:], images[:, :, :, 26:] = 0, 0
    upright = TrainAugment(16, NORM, hflip=False, vflip=False, rot90=False, seed=0)
    _, out_masks, raw = upright(images, masks, return_raw=True)
    offsets = [_offsets_of(raw[b], out_masks[b]) for b in range(400)]
    assert {top for top, _ in offsets} == set(range(30 - 16 + 1))
    assert {left for _, left in offsets} == set(range(26 - 16 + 1))
    turned = TrainAugment(16, NORM, seed=1)
    _, out_masks, raw = turned(images, masks, return_raw=True)
    for b in range(0, 400, 25):
        _check_sample(raw[b], out_masks[b], masks[b])
    padding = (raw.sum(1) == 0) & (out_masks == IGNORE)
    assert not padding.any()


def test_a_labelled_box_smaller_than_the_crop_is_always_inside_it():
    images, masks = _encoded_batch(200, 40, 40, seed=4)
    box = torch.full_like(masks, IGNORE)
    box[:, 10:18, 5:12] = masks[:, 10:18, 5:12].clamp(max=5)  # 8 x 7 labelled pixels
    aug = TrainAugment(16, NORM, hflip=False, vflip=False, rot90=False, seed=0)
    _, out_masks, raw = aug(images, box, return_raw=True)
    assert ((out_masks != IGNORE).sum((1, 2)) == 56).all()
    tops = {_offsets_of(raw[b], out_masks[b])[0] for b in range(200)}
    assert tops == set(range(18 - 16, 10 + 1))  # every crop that covers rows 10..17


def test_an_unlabelled_tile_is_cropped_anywhere():
    images, masks = _encoded_batch(200, 30, 30, seed=5)
    aug = TrainAugment(16, NORM, hflip=False, vflip=False, rot90=False, seed=0)
    _, out_masks, raw = aug(images, torch.full_like(masks, IGNORE), return_raw=True)
    assert {_offsets_of(raw[b], out_masks[b])[0] for b in range(200)} == set(range(15))


@pytest.mark.parametrize("channels_last", [False, True])
def test_crop_first_gives_the_bits_of_the_whole_tile_on_the_unit_scale(channels_last):
    """A tile larger than the crop is cut before its conversion to the unit scale: the crop's
    values (nodata included) are bit for bit those of converting the whole tile first."""
    generator = torch.Generator().manual_seed(5)
    batch, size, crop = 3, 48, 20
    position = torch.arange(size * size).view(1, size, size).expand(batch, -1, -1)
    noise = torch.randint(1, 60000, (batch, size, size), generator=generator)
    holes = torch.randint(0, 3, (batch, size, size), generator=generator) * 7000  # nodata 0
    native = torch.stack([position + 1000, noise, holes], 1).to(torch.uint16)
    if channels_last:
        native = native.contiguous(memory_format=torch.channels_last)
    norm = _bands("uint16", 3, nodata=0, display=(900.0, 9000.0))
    masks = torch.zeros(batch, size, size, dtype=torch.uint8)
    _, _, raw = TrainAugment(crop, norm, rot90=True, seed=1)(native, masks, return_raw=True)
    lo, span = norm.unit_scale()
    source = torch.round(raw[:, 0].double() * span[0] + lo[0]).long() - 1000  # [B, c, c]
    whole = norm.to_unit(native).flatten(2)  # the former order: the whole tile converted
    expected = whole.gather(2, source.flatten(1)[:, None].expand(-1, 3, -1)).view_as(raw)
    assert torch.equal(raw, expected)
    assert (raw[:, 2] == (norm.bands[2].mean - lo[2]) / span[2]).any()  # nodata seen
