import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tood.boxes import delta_decode, distance2bbox
from tood.model.backbone import ResNet, load_torchvision_weights
from tood.model.detector import Detector, count_parameters
from tood.model.heads import ParallelHead, TaskDecomposition, TOODHead, aligned_logit, deform_sample, sample_boxes
from tood.model.neck import FPN
from tood.priors import make_priors

torch.set_num_threads(1)
SIZES5 = [(6, 8), (3, 4), (2, 3), (1, 2), (1, 1)]


def tiny_backbone(**kw) -> ResNet:
    return ResNet(depth=18, base_width=16, **kw)


# ----------------------------------------------------------------------------- backbone


def torchvision_resnet50_keys() -> dict[str, tuple[int, ...]]:
    """torchvision resnet50 state_dict (without fc), written from its architecture."""
    bn = lambda p, c: {f"{p}.weight": (c,), f"{p}.bias": (c,), f"{p}.running_mean": (c,), f"{p}.running_var": (c,), f"{p}.num_batches_tracked": ()}
    keys = {"conv1.weight": (64, 3, 7, 7), **bn("bn1", 64)}
    inplanes = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            keys[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
            keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            keys[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            keys.update(bn(f"{p}.bn1", planes) | bn(f"{p}.bn2", planes) | bn(f"{p}.bn3", planes * 4))
            if b == 0:
                keys[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                keys.update(bn(f"{p}.downsample.1", planes * 4))
            inplanes = planes * 4
    return keys


def test_resnet50_state_dict_matches_torchvision():
    model = ResNet(depth=50)
    sd = model.state_dict()
    expected = torchvision_resnet50_keys()
    assert len(sd) == len(expected) == 318  # torchvision's 320 minus fc.weight, fc.bias
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    assert tuple(sd["layer3.5.conv2.weight"].shape) == (256, 256, 3, 3)
    assert tuple(sd["layer4.0.downsample.0.weight"].shape) == (2048, 1024, 1, 1)
    # torchvision resnet50: 25,557,032 params, of which fc = 2048 * 1000 + 1000
    assert count_parameters(model) == 25_557_032 - 2_049_000
    assert model.out_channels == [512, 1024, 2048]
    # resnet18: 11,689,512 params, fc = 512 * 1000 + 1000
    assert count_parameters(ResNet(depth=18)) == 11_689_512 - 513_000


def test_small_backbone_shapes_and_strides():
    model = tiny_backbone()
    assert model.out_channels == [32, 64, 128]
    outs = model(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(1, 32, 8, 12), (1, 64, 4, 6), (1, 128, 2, 3)]


def test_load_torchvision_weights_round_trip_with_fc(tmp_path):
    src = tiny_backbone()
    for p in src.state_dict().values():
        if p.is_floating_point():
            p.copy_(torch.randn_like(p))
    sd = dict(src.state_dict())
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1000, 128), torch.randn(1000)
    path = tmp_path / "resnet18-tiny.pth"
    torch.save(sd, path)
    dst = tiny_backbone()
    load_torchvision_weights(dst, path)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    # checkpoints from before BN's num_batches_tracked buffer still load
    old = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    load_torchvision_weights(tiny_backbone(), old)


def test_load_torchvision_weights_names_file_and_keys(tmp_path):
    sd = dict(tiny_backbone().state_dict())
    del sd["layer2.0.conv1.weight"]
    sd["layer3.0.conv2.weight"] = torch.zeros(1, 1, 3, 3)
    sd["head.extra"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError) as err:
        load_torchvision_weights(tiny_backbone(), path)
    msg = str(err.value)
    assert str(path) in msg and "layer2.0.conv1.weight" in msg and "layer3.0.conv2.weight" in msg and "head.extra" in msg


def test_frozen_stages_and_frozen_bn_survive_an_optimizer_step():
    torch.manual_seed(0)
    model = tiny_backbone(frozen_stages=1, norm_eval=True).train()
    assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert not model.layer1.training and model.layer2.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sum(o.square().mean() for o in model(torch.randn(2, 3, 64, 64))).backward()
    opt.step()
    after = model.state_dict()
    frozen = [k for k in before if k.startswith(("conv1.", "bn1.", "layer1.")) or ".bn" in k or "downsample.1" in k]
    assert len(frozen) > 50
    for k in frozen:  # weights, BN affine and running statistics
        assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before["layer2.0.conv1.weight"], after["layer2.0.conv1.weight"])

    free = tiny_backbone(frozen_stages=-1, norm_eval=False).train()
    assert all(p.requires_grad for p in free.parameters()) and free.bn1.training


# ----------------------------------------------------------------------------- neck


def test_fpn_matches_reference_and_parameter_count():
    torch.manual_seed(0)
    fpn = FPN([8, 16, 32], out_channels=4, num_outs=5)
    c = [torch.randn(1, 8, 8, 12), torch.randn(1, 16, 4, 6), torch.randn(1, 32, 2, 3)]
    outs = fpn(c)
    assert [tuple(o.shape[2:]) for o in outs] == [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]
    lat = [F.conv2d(x, m.weight, m.bias) for x, m in zip(c, fpn.lateral_convs)]
    lat[1] = lat[1] + lat[2].repeat_interleave(2, 2).repeat_interleave(2, 3)  # nearest x2
    lat[0] = lat[0] + lat[1].repeat_interleave(2, 2).repeat_interleave(2, 3)
    p = [F.conv2d(x, m.weight, m.bias, padding=1) for x, m in zip(lat, fpn.fpn_convs)]
    e0, e1 = fpn.extra_convs
    p6 = F.conv2d(p[2], e0.weight, e0.bias, stride=2, padding=1)  # on the P5 output
    p7 = F.conv2d(p6, e1.weight, e1.bias, stride=2, padding=1)  # no ReLU in between (relu_before_extra_convs=False)
    for got, ref in zip(outs, p + [p6, p7]):
        torch.testing.assert_close(got, ref)
    for m in fpn.modules():
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] ** 2
            assert m.bias.abs().max() == 0
            assert m.weight.abs().max() <= math.sqrt(6 / (k * (m.in_channels + m.out_channels)))
    # R-50 FPN: 1x1 laterals 3584*256 + 768, five 3x3 convs (256*256*9 + 256)
    assert count_parameters(FPN([512, 1024, 2048], 256, 5)) == 3584 * 256 + 768 + 5 * (589_824 + 256)


# ----------------------------------------------------------------------------- aligned score


def test_aligned_logit_values():
    z, m = torch.meshgrid(torch.linspace(-12, 12, 25), torch.linspace(-12, 12, 25), indexing="ij")
    got = aligned_logit(z, m)
    torch.testing.assert_close(got.sigmoid(), (z.sigmoid() * m.sigmoid()).sqrt(), atol=1e-5, rtol=0)
    z64, m64 = z.double(), m.double()
    p = (z64.sigmoid() * m64.sigmoid()).sqrt()
    torch.testing.assert_close(got.double(), torch.log(p / (1 - p)), atol=1e-4, rtol=1e-5)
    # hand values: p = 1/2 -> 0; z = m large: 1 - p ~= e^-z -> z; p = sqrt(e^-1e4) -> -5e3
    big = aligned_logit(torch.tensor([0.0, 60.0, 1e4, 1e4, -1e4]), torch.tensor([0.0, 60.0, 1e4, -1e4, -1e4]))
    torch.testing.assert_close(big, torch.tensor([0.0, 60.0, 1e4, -5e3, -1e4]), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("autocast", [False, True])
def test_aligned_logit_gradients_finite_at_extremes(autocast):
    vals = torch.tensor([-1e4, -100.0, -20.0, 0.0, 20.0, 100.0, 1e4])
    zz, mm = torch.meshgrid(vals, vals, indexing="ij")
    z = zz.clone().to(torch.bfloat16 if autocast else torch.float32).requires_grad_()
    m = mm.clone().to(torch.bfloat16 if autocast else torch.float32).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = aligned_logit(z, m)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(z.grad).all() and torch.isfinite(m.grad).all()
    # d logit / dz = e^-z / (e^-z + e^-m) -> 1/2 on the diagonal of large equal inputs (no clamp kills it)
    i = (vals == 100.0).nonzero().item()
    j = (vals == 1e4).nonzero().item()
    assert z.grad[i, i].float().item() == pytest.approx(0.5, abs=1e-2)
    assert z.grad[j, j].float().item() == pytest.approx(0.5, abs=1e-2)


# ----------------------------------------------------------------------------- deformable sampling


def brute_force_sample(x: torch.Tensor, off: torch.Tensor) -> torch.Tensor:
    b_, c_, h_, w_ = x.shape
    out = torch.zeros(x.shape, dtype=torch.float64)
    for b in range(b_):
        for c in range(c_):
            for i in range(h_):
                for j in range(w_):
                    y, xx = i + off[b, 2 * c, i, j].item(), j + off[b, 2 * c + 1, i, j].item()
                    y0, x0 = math.floor(y), math.floor(xx)
                    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                        for xq, wx in ((x0, 1 - (xx - x0)), (x0 + 1, xx - x0)):
                            if 0 <= yy < h_ and 0 <= xq < w_:
                                out[b, c, i, j] += wy * wx * x[b, c, yy, xq].item()
    return out


def test_deform_sample_matches_brute_force_and_grid_sample():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 5, 6)
    off = torch.empty(2, 8, 5, 6).uniform_(-4, 4)  # many positions outside the map
    off[:, :, 0, 0] = torch.tensor([-1.0, 0.5, 5.0, 0.0, 0.0, 6.0, -0.5, -0.5])  # edges, exact -1 / H / W
    off.requires_grad_()
    got = deform_sample(x, off)
    torch.testing.assert_close(got.double(), brute_force_sample(x, off.detach()), atol=1e-5, rtol=0)
    # second reference: grid_sample (align_corners=True, zeros) per channel, incl. offset gradients
    ys = torch.arange(5.0).view(1, 1, 5, 1) + off.view(2, 4, 2, 5, 6)[:, :, 0]
    xs = torch.arange(6.0).view(1, 1, 1, 6) + off.view(2, 4, 2, 5, 6)[:, :, 1]
    grid = torch.stack([xs / 5 * 2 - 1, ys / 4 * 2 - 1], -1).view(8, 5, 6, 2)
    ref = F.grid_sample(x.view(8, 1, 5, 6), grid, mode="bilinear", padding_mode="zeros", align_corners=True).view(2, 4, 5, 6)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    w = torch.randn(2, 4, 5, 6)
    (g_got,) = torch.autograd.grad((got * w).sum(), off)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), off)
    torch.testing.assert_close(g_got, g_ref, atol=1e-4, rtol=1e-4)
    # zero offsets: the input, bit for bit
    assert torch.equal(deform_sample(x, torch.zeros(2, 8, 5, 6)), x)


def test_sample_boxes_falls_back_on_invalid_boxes():
    # one row of two cells; channels x1, y1, x2, y2
    boxes = torch.tensor([[0.0, 10.0], [0.0, 0.0], [1.0, 11.0], [1.0, 1.0]]).view(1, 4, 1, 2)
    off = torch.zeros(1, 8, 1, 2)
    off[0, 1, 0, 0] = 1.0  # cell 0 reads x1 from cell 1 -> x1 = 10 > x2 = 1: invalid, keep (0, 0, 1, 1)
    off[0, 1, 0, 1] = -0.5  # cell 1 reads x1 halfway to cell 0 -> 5: valid (5, 0, 11, 1)
    out = sample_boxes(boxes, off)
    assert out[0, :, 0, 0].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert out[0, :, 0, 1].tolist() == [5.0, 0.0, 11.0, 1.0]


# ----------------------------------------------------------------------------- heads


def test_head_parameter_counts_match_paper():
    t, p = count_parameters(TOODHead(80)), count_parameters(ParallelHead(80))
    assert t == 4_823_790 and round(t / 1e6, 2) == 4.82
    assert p == 4_918_618 and round(p / 1e6, 2) == 4.92
    assert count_parameters(ParallelHead(80, centerness=False)) == p - (256 * 9 + 1)


@pytest.mark.parametrize(
    "toggle, prefix, removed",
    [
        ("layer_attention", ("cls_decomp.layer_attention", "reg_decomp.layer_attention"), 2 * (1536 * 32 + 32 + 32 * 6 + 6)),
        ("alignment_map", ("cls_prob_module",), 1536 * 64 + 64 + 64 * 9 + 1),
        ("offsets", ("reg_offset_module",), 1536 * 64 + 64 + 64 * 8 * 9 + 8),
    ],
)
def test_t_head_toggles_remove_their_parameters(toggle, prefix, removed):
    full, off = TOODHead(80), TOODHead(80, **{toggle: False})
    full_names = {n for n, _ in full.named_parameters()}
    off_names = {n for n, _ in off.named_parameters()}
    assert off_names == {n for n in full_names if not n.startswith(prefix)} and off_names != full_names
    assert count_parameters(full) - count_parameters(off) == removed


def small_feats(batch: int = 2, channels: int = 8, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, channels, h, w, generator=g) for h, w in SIZES5]


def capture(module: nn.Module, store: list) -> None:
    module.register_forward_hook(lambda _m, _i, out: store.append(out.detach()))


def flat(maps: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, m.shape[1]) for m in maps], 1)


@pytest.mark.parametrize("la, am, of", [(True, True, True), (False, True, True), (True, False, True), (True, True, False), (False, False, False)])
def test_t_head_toggles_give_valid_outputs(la, am, of):
    torch.manual_seed(0)
    head = TOODHead(3, in_channels=8, feat_channels=8, stacked_convs=3, gn_groups=2, layer_attention=la, alignment_map=am, offsets=of)
    z, m = [], []
    capture(head.tood_cls, z)
    if am:
        capture(head.cls_prob_module, m)
    priors = make_priors(SIZES5)
    out = head(small_feats(), priors)
    a = priors.num_priors
    assert out["cls_logits"].shape == (2, a, 3) and out["boxes"].shape == (2, a, 4) and out["centerness"] is None
    assert out["cls_logits"].dtype == out["boxes"].dtype == torch.float32
    assert torch.isfinite(out["cls_logits"]).all() and torch.isfinite(out["boxes"]).all()
    b = out["boxes"]
    assert (b[..., 2] >= b[..., 0]).all() and (b[..., 3] >= b[..., 1]).all()
    expected = (flat(z).sigmoid() * flat(m).sigmoid()).sqrt() if am else flat(z).sigmoid()
    torch.testing.assert_close(out["cls_logits"].sigmoid(), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("layer_attention", [True, False])
def test_task_decomposition_matches_explicit_layer_weighting(layer_attention):
    torch.manual_seed(0)
    td = TaskDecomposition(feat_channels=4, stacked_convs=3, la_down_rate=1, gn_groups=2, layer_attention=layer_attention)
    for p in td.parameters():
        nn.init.normal_(p, std=0.5)
    feat = torch.randn(2, 12, 5, 6)
    avg = feat.mean((2, 3), keepdim=True)
    if layer_attention:
        la = td.layer_attention
        w = torch.sigmoid(la[2](F.relu(la[0](avg)))).view(2, 3, 1, 1, 1)
    else:
        w = torch.ones(2, 3, 1, 1, 1)
    weighted = (feat.view(2, 3, 4, 5, 6) * w).view(2, 12, 5, 6)
    ref = F.relu(td.norm(F.conv2d(weighted, td.reduction_conv.weight)))
    torch.testing.assert_close(td(feat, avg), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head_cls", [TOODHead, ParallelHead])
@pytest.mark.parametrize("anchor_type", ["anchor_based", "anchor_free"])
def test_box_decode_matches_box_coders(head_cls, anchor_type):
    """The head decodes through tood.boxes' coders (pinned to hand-computed values in tests/test_boxes.py)."""
    torch.manual_seed(0)
    kw = dict(offsets=False) if head_cls is TOODHead else {}
    head = head_cls(3, in_channels=8, feat_channels=8, stacked_convs=2, gn_groups=2, anchor_type=anchor_type, **kw)
    with torch.no_grad():
        head.scales.copy_(torch.tensor([0.5, 1.0, 1.5, 2.0, 0.75]))
    raw = []
    capture(head.tood_reg if head_cls is TOODHead else head.reg_conv, raw)
    priors = make_priors(SIZES5)
    boxes = head(small_feats(), priors)["boxes"]
    reg = flat([r * 10 for r in raw]) / 10  # (B, A, 4)
    scale = head.scales.detach().repeat_interleave(torch.tensor(priors.num_per_level))[:, None]  # (A, 1)
    if anchor_type == "anchor_based":
        expected = delta_decode(priors.anchors, scale * reg)
    else:
        expected = distance2bbox(priors.points, scale * reg.exp() * priors.strides[:, None])
    torch.testing.assert_close(boxes, expected, atol=1e-4, rtol=1e-5)


def pointwise_(head: nn.Module) -> None:
    """Make every 3x3 conv a 1x1 (centre tap only) with large weights: the head becomes per-cell."""
    torch.manual_seed(0)
    for mod in head.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.normal_(mod.weight, std=0.5)
            if mod.kernel_size == (3, 3):
                keep = torch.zeros(3, 3)
                keep[1, 1] = 1
                mod.weight.data *= keep


@pytest.mark.parametrize("head_cls, kw", [(TOODHead, {}), (TOODHead, {"offsets": False}), (ParallelHead, {})])
def test_output_order_follows_priors(head_cls, kw):
    head = head_cls(3, in_channels=8, feat_channels=8, stacked_convs=2, gn_groups=2, **kw)
    pointwise_(head)
    feats = [torch.zeros(1, 8, h, w) for h, w in SIZES5]
    feats[2][0, :, 1, 2] = torch.randn(8)  # level 2 (stride 32), row 1, column 2
    priors = make_priors(SIZES5)
    with torch.no_grad():
        out = head(feats, priors)
    idx = priors.level_slices()[2].start + 1 * 3 + 2
    assert priors.points[idx].tolist() == [64.0, 32.0]
    # offsets spread a cell's box to the neighbours that sample it, so boxes only without them
    keys = ("cls_logits",) if getattr(head, "reg_offset_module", None) is not None else ("cls_logits", "boxes")
    for key in keys:
        per_cell = out[key][0].reshape(priors.num_priors, -1)  # (A, K)
        if key == "boxes":  # anchor-free: compare distances from the point
            per_cell = per_cell - priors.points.repeat(1, 2)
        differs = [
            i for sl in priors.level_slices() for i in range(sl.start, sl.stop)
            if (per_cell[i] - per_cell[sl.start]).abs().max() > 1e-4
        ]
        assert differs == [idx], key


# ----------------------------------------------------------------------------- detector


def tiny_detector(num_classes: int = 4) -> Detector:
    backbone = tiny_backbone(frozen_stages=1, norm_eval=True)
    neck = FPN(backbone.out_channels, out_channels=64, num_outs=5)
    head = TOODHead(num_classes, in_channels=64, feat_channels=64, gn_groups=8)
    return Detector(backbone, neck, head)


def test_detector_forward_backward_reaches_every_trainable_parameter():
    torch.manual_seed(0)
    model = tiny_detector().train()
    out = model(torch.randn(2, 3, 64, 96))
    priors = out["priors"]
    # levels (8, 12), (4, 6), (2, 3), (1, 2), (1, 1)
    assert priors.num_per_level == (96, 24, 6, 2, 1)
    assert out["cls_logits"].shape == (2, 129, 4) and out["boxes"].shape == (2, 129, 4) and out["centerness"] is None
    assert model(torch.randn(1, 3, 64, 96))["priors"] is priors  # cached per size
    assert model(torch.randn(1, 3, 32, 64))["priors"].num_per_level == (32, 8, 2, 1, 1)
    loss = out["cls_logits"].sigmoid().square().mean() + (out["boxes"] / 100).square().mean()
    loss.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert count_parameters(model, trainable_only=True) == sum(p.numel() for p in trainable.values()) < count_parameters(model)
    no_grad = [n for n, p in trainable.items() if p.grad is None or p.grad.abs().sum() == 0]
    assert no_grad == []
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


@pytest.mark.parametrize("prior", [0.01, 0.5])
def test_alignment_map_starts_at_its_configured_prior(prior):
    from tood.model.tood_head import TOODHead

    head = TOODHead(num_classes=3, in_channels=16, feat_channels=16, gn_groups=4, alignment_map_prior=prior)
    assert torch.sigmoid(head.cls_prob_module[-1].bias).item() == pytest.approx(prior, rel=1e-5)
    assert torch.sigmoid(head.tood_cls.bias).allclose(torch.tensor(0.01))  # the class prior is unchanged
