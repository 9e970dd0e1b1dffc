"""Initialisation statistics the learning-parity fix (issue #16) relies on.

ResUNet-34 is initialised as ``smp.Unet("resnet34")`` is: the encoder's residual-branch
BatchNorm scales start at 1 (timm would zero them), decoder convs He-uniform (fan-in), a 3x3
Xavier-uniform head. Drawn in the same order, the same seed gives smp's weights bit for bit,
and the learning-parity benchmark then trains the two identically (docs/BENCHMARKS.md,
"Learning parity"). The decoder convs of ResUNet-a are He-initialised too, the logits convs
of every architecture Xavier-uniform; PyTorch's default conv init is 2.5-4x smaller. Pretrained
encoder weights are never re-initialised.
"""

import math

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

import archs
from archs.layers import conv_fan, init_conv_bn_, init_head_

NUM_CLASSES = 5


def he_std(conv: nn.Module) -> float:
    return math.sqrt(2.0 / conv_fan(conv, "fan_in"))


def default_std(conv: nn.Module) -> float:
    """Std of PyTorch's default conv init, ``kaiming_uniform_(a=sqrt(5))``: 1/sqrt(3 fan_in)."""
    fan_in = nn.init._calculate_fan_in_and_fan_out(conv.weight)[0]
    return 1.0 / math.sqrt(3.0 * fan_in)


def convs(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


def check_he(module: nn.Module, skip: tuple[nn.Module, ...] = ()) -> int:
    """Every large conv of ``module`` (but ``skip``) has the He std within 5 %, zero bias."""
    checked = 0
    for conv in convs(module):
        if any(conv is s for s in skip) or conv.weight.numel() < 20_000:
            continue  # small tensors: the sample std is too noisy to pin
        std = conv.weight.std().item()
        assert std == pytest.approx(he_std(conv), rel=0.05), conv
        assert std > 2 * default_std(conv), conv  # clearly not PyTorch's default (0.41x)
        assert conv.bias is None or not conv.bias.any()
        checked += 1
    return checked


def check_head(conv: nn.Conv2d) -> None:
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(conv.weight)
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    assert conv.weight.abs().max().item() <= bound
    assert conv.weight.abs().max().item() > 0.8 * bound  # uniform over the whole range
    assert conv.bias is None or not conv.bias.any()


def logit_spread(model: nn.Module, seeds=(0, 1, 2), size: int = 64) -> float:
    """Mean over pixels and seeds of the std across classes of the initial logits."""
    spreads = []
    for seed in seeds:
        torch.manual_seed(seed)
        x = torch.randn(2, model.in_channels, size, size)
        with torch.no_grad():
            out = archs.segmentation_logits(model(x))
        spreads.append(out.std(dim=1).mean().item())
    return sum(spreads) / len(spreads)


def test_init_conv_bn_uses_fan_in_of_both_conv_kinds():
    torch.manual_seed(0)
    layers = nn.Sequential(
        nn.Conv2d(64, 128, 3), nn.BatchNorm2d(128), nn.ConvTranspose2d(128, 96, 2, stride=2)
    )
    layers[1].weight.data.fill_(0.3)
    init_conv_bn_(layers)
    assert layers[0].weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.03)
    # a 2x2 stride-2 transposed conv: each output value sees one tap of each of 128 inputs
    assert layers[2].weight.std().item() == pytest.approx(math.sqrt(2 / 128), rel=0.03)
    assert not layers[2].bias.any()
    assert torch.equal(layers[1].weight, torch.ones(128))


def test_init_head_is_xavier_uniform():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, NUM_CLASSES, 1)
    init_head_(conv)
    check_head(conv)


def test_init_conv_bn_uniform_is_kaiming_uniform_to_the_bit():
    """``distribution="uniform"`` draws what ``nn.init.kaiming_uniform_`` (smp's) draws."""
    conv = nn.Conv2d(96, 64, 3)
    torch.manual_seed(5)
    init_conv_bn_(conv, distribution="uniform")
    ours = conv.weight.detach().clone()
    torch.manual_seed(5)
    nn.init.kaiming_uniform_(conv.weight, mode="fan_in", nonlinearity="relu")
    assert torch.equal(ours, conv.weight)
    with pytest.raises(ValueError, match="distribution"):
        init_conv_bn_(conv, distribution="gamma")


def test_resunet34_decoder_and_head_init():
    torch.manual_seed(0)
    model = archs.create_model("resunet34", NUM_CLASSES)
    assert check_he(model.decoder) >= 7
    for conv in convs(model.decoder):  # He-uniform: the whole range up to sqrt(6 / fan_in)
        bound = math.sqrt(6.0 / conv_fan(conv))
        assert 0.95 * bound < conv.weight.abs().max().item() <= bound * (1 + 1e-6)
    assert model.head.kernel_size == (3, 3) and model.head.padding == (1, 1)
    check_head(model.head)
    for bn in (m for m in model.decoder.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and not bn.bias.any()


def test_resunet34_residual_scales_start_at_one_with_the_seed_s_draws():
    """timm's zero-init of the residual branches' last BN is undone without drawing numbers:
    the encoder is timm's ``zero_init_last=False`` model of the same seed, tensor for tensor."""
    torch.manual_seed(3)
    ref = timm.create_model("resnet18", features_only=True, zero_init_last=False)
    torch.manual_seed(3)
    model = archs.create_model("resunet34", NUM_CLASSES, encoder="resnet18")
    ours, theirs = model.encoder.state_dict(), ref.state_dict()
    assert list(ours) == list(theirs)
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    last = [b.bn2.weight for layer in (model.encoder.layer1, model.encoder.layer4) for b in layer]
    assert len(last) == 4 and all(torch.equal(w, torch.ones_like(w)) for w in last)
    torch.manual_seed(3)  # the option gives timm's zeros back
    timm_init = archs.create_model(
        "resunet34", NUM_CLASSES, encoder="resnet18", zero_init_last=True
    )
    assert not timm_init.encoder.layer1[0].bn2.weight.any()


def test_resunet34_loads_a_state_with_the_old_1x1_head():
    """Exports from before the 3x3 head load into a model built with today's defaults."""
    torch.manual_seed(0)
    old = archs.create_model("resunet34", NUM_CLASSES, encoder="resnet10t", head_kernel=1)
    new = archs.create_model("resunet34", NUM_CLASSES, encoder="resnet10t")
    new.load_state_dict(old.state_dict(), strict=True)
    assert new.head.kernel_size == (1, 1)
    x = torch.randn(1, 3, 64, 64)
    old.eval()
    new.eval()
    with torch.no_grad():
        assert torch.equal(old(x), new(x))
    with pytest.raises(ValueError, match="head_kernel"):
        archs.create_model("resunet34", NUM_CLASSES, encoder="resnet10t", head_kernel=5)


@pytest.mark.parametrize(
    ("name", "options", "low", "high"),
    [
        ("resunet34", {}, 0.6, 1.2),
        ("unet", {"base_width": 16}, 0.5, 1.2),
        ("resuneta_d6", {"base_width": 8}, 0.4, 1.2),  # PyTorch default: ~0.25
    ],
)
def test_initial_logit_spread(name, options, low, high):
    """The head's init sets the spread: PyTorch's default gave ResUNet-34 ~0.35."""
    torch.manual_seed(0)
    model = archs.create_model(name, NUM_CLASSES, **options)
    assert low < logit_spread(model) < high


def test_unet_convs_keep_the_default_init_and_the_head_is_xavier():
    """He init on every UNet conv was measured to hurt (demo test mIoU 0.41 -> 0.22)."""
    torch.manual_seed(0)
    model = archs.create_model("unet", NUM_CLASSES, base_width=16)
    check_head(model.head)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m is not model.head]
    assert len(convs) >= 10
    for conv in convs:  # kaiming_uniform_(a=sqrt(5)): std 1/sqrt(3 fan_in), 0.41x He's
        default = (1.0 / (3 * conv.weight[0].numel())) ** 0.5
        assert conv.weight.std().item() == pytest.approx(default, rel=0.15)


@pytest.mark.parametrize("name", ["resuneta_d6", "resuneta_d6_mtsk"])
def test_resuneta_convs_before_a_norm_are_he_initialised(name):
    torch.manual_seed(0)
    model = archs.create_model(name, NUM_CLASSES, base_width=16)
    if archs.is_multitask(model):
        heads = [model.head.distance[-1], model.head.boundary[-1], model.head.segmentation[-1]]
        heads.append(model.head.colour)
    else:
        heads = [model.classifier]
    for conv in heads:
        check_head(conv)
    first = [b[2] for block in (*model.encoder, *model.decoder) for b in block.branches]
    assert check_he(nn.ModuleList(first)) >= 10
    assert check_he(nn.ModuleList([model.middle, *model.ups, *model.combines])) >= 5
    # the convs that feed the residual stream keep PyTorch's default scale
    stream = [b[5] for block in model.encoder for b in block.branches]
    stream += [down.conv for down in model.downs]
    for conv in (c for c in stream if c.weight.numel() >= 20_000):
        assert conv.weight.std().item() == pytest.approx(default_std(conv), rel=0.05)


def test_resunet34_local_weights_are_kept_bit_identical(tmp_path):
    """Loading ``weights`` gives exactly the file's encoder tensors, BN statistics included."""
    torch.manual_seed(123)
    ref = timm.create_model("resnet10t")
    zero_scales = 0
    for m in ref.modules():  # non-default values everywhere, so that any re-init shows
        if isinstance(m, nn.BatchNorm2d):
            if m.weight.any():  # timm's zero_init_last scales stay 0 in the file
                m.weight.data.uniform_(0.5, 1.5)
            else:
                zero_scales += 1
            m.bias.data.uniform_(-0.5, 0.5)
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    assert zero_scales > 0
    state = {k: v.detach().clone().contiguous() for k, v in ref.state_dict().items()}
    path = tmp_path / "resnet10t.safetensors"
    save_file(state, str(path))

    model = archs.create_model("resunet34", NUM_CLASSES, encoder="resnet10t", weights=path)
    encoder = model.encoder.state_dict()
    shared = [k for k in encoder if k in state]
    assert len(shared) == len(encoder) > 20  # every encoder tensor comes from the file
    for key in shared:
        assert torch.equal(encoder[key], state[key]), key
    check_head(model.head)  # the new layers are still initialised


def test_fcn_local_weights_are_kept_bit_identical(tmp_path):
    torch.manual_seed(7)
    ref = timm.create_model("vgg11")
    state = {k: v.detach().clone().contiguous() for k, v in ref.state_dict().items()}
    path = tmp_path / "vgg11.safetensors"
    save_file(state, str(path))
    model = archs.create_model("fcn8s", NUM_CLASSES, backbone="vgg11", weights=path)
    trunk = [m for m in model.stage3.modules() if isinstance(m, nn.Conv2d)]
    assert torch.equal(trunk[0].weight, state["features.0.weight"])
    assert torch.equal(model.fc6.weight, state["pre_logits.fc1.weight"])
    assert torch.equal(model.fc7.bias, state["pre_logits.fc2.bias"])
