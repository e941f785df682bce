import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import ROOT
from tood.build import build_model
from tood.config import ConfigError, load_config
from tood.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from tood.model.pretrain import CONTEXT, ensure_pretrained_backbone, object_crops


def test_object_crops_by_hand(tmp_path):
    # a black 100x100 image with a red 40x20 box and a blue 30x30 box; category ids 7 (red), 3 (blue)
    img = np.zeros((100, 100, 3), np.uint8)
    img[10:30, 20:60] = (255, 0, 0)
    img[60:90, 60:90] = (0, 0, 255)
    (tmp_path / "train").mkdir()
    (tmp_path / "annotations").mkdir()
    Image.fromarray(img).save(tmp_path / "train" / "a.png")
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 100}],
            "categories": [{"id": 7, "name": "red"}, {"id": 3, "name": "blue"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [60, 60, 30, 30]},
                            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [20, 10, 40, 20]}]}
    (tmp_path / "annotations" / "train.json").write_text(json.dumps(data))
    x, y = object_crops(tmp_path, "train", 26)
    assert x.shape == (2, 3, 26, 26) and y.tolist() == [1, 0]  # labels follow the json's category order
    rgb = x * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
    # the box fills the crop but a margin of CONTEXT / (1 + 2 CONTEXT) of the side on each edge
    margin = CONTEXT / (1 + 2 * CONTEXT) * 26  # = 3 px
    inner, edge = int(margin) + 1, int(margin) - 2
    torch.testing.assert_close(rgb[1, :, inner:-inner, inner:-inner].mean((1, 2)), torch.tensor([255.0, 0, 0]), atol=1.0, rtol=0)
    torch.testing.assert_close(rgb[0, :, inner:-inner, inner:-inner].mean((1, 2)), torch.tensor([0.0, 0, 255]), atol=1.0, rtol=0)
    assert rgb[:, :, :edge].abs().max() < 1.0 and rgb[:, :, :, -edge:].abs().max() < 1.0  # context: background


def _config(tmp_path, *overrides):
    return load_config(ROOT / "experiments/base.yaml", profile="proxy", overrides=[
        f"model.backbone.pretrained={tmp_path / 'bb' / 'r18.pth'}", "model.backbone.base_width=8",
        "model.backbone.pretrain={n_images: 120, epochs: 3, crop_size: 32, batch_size: 32, lr: 0.003}",
        "data.synthetic.image_size=96", "data.synthetic.size=[20, 60]", *overrides])


def test_pretrained_backbone_is_made_once_learns_and_loads(tmp_path):
    cfg = _config(tmp_path)
    path = ensure_pretrained_backbone(cfg)
    meta = json.loads(path.with_suffix(".json").read_text())
    # 5 classes: chance is 0.2; the cue decides the class, so a few hundred crops learn it
    assert meta["val_accuracy"] > 0.6 and meta["n_train_crops"] > 200
    assert meta["recipe"]["pretrain"]["n_images"] == 120 and meta["recipe"]["knobs"]["cue_size"] == cfg.data.synthetic.cue_size
    stamp = path.stat().st_mtime_ns
    assert ensure_pretrained_backbone(cfg) == path and path.stat().st_mtime_ns == stamp  # reused, not redone
    saved = torch.load(path, weights_only=True)
    model = build_model(cfg.model)
    for k, v in model.backbone.state_dict().items():
        torch.testing.assert_close(v, saved[k], msg=k)
    assert not torch.equal(build_model(cfg.model, load_pretrained=False).backbone.conv1.weight, saved["conv1.weight"])


def test_pretrained_backbone_from_another_recipe_is_an_error(tmp_path):
    ensure_pretrained_backbone(_config(tmp_path, "model.backbone.pretrain.epochs=1"))
    with pytest.raises(ConfigError, match=r"r18\.pth: backbone was pre-trained with .*'epochs': 1.* asks for .*'epochs': 2"):
        ensure_pretrained_backbone(_config(tmp_path, "model.backbone.pretrain.epochs=2"))
    with pytest.raises(ConfigError, match=r"model\.backbone\.pretrain: needs model\.backbone\.pretrained"):
        ensure_pretrained_backbone(_config(tmp_path, "model.backbone.pretrained=null"))


def test_pretraining_is_deterministic_whatever_ran_before(tmp_path):
    torch.manual_seed(1)
    a = ensure_pretrained_backbone(_config(tmp_path / "a", "model.backbone.pretrain.epochs=1"))
    torch.manual_seed(2)  # a different global RNG state before the second run
    b = ensure_pretrained_backbone(_config(tmp_path / "b", "model.backbone.pretrain.epochs=1"))
    wa, wb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)
