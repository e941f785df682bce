"""``tood detect``: run a trained detector on image files; write JSON and a drawn PNG."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from tood.config import Config
from tood.data.coco import decode_image
from tood.data.transforms import build_transforms, collate
from tood.postprocess import postprocess

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60)]


@torch.no_grad()
def detect_images(
    model: torch.nn.Module, cfg: Config, device: torch.device, images: list[Path], out_dir: Path, class_names: list[str] | None = None
) -> list[Path]:
    """Detect objects in each image; returns the written files (``<stem>.json``, ``<stem>.png``).

    Boxes in the JSON are xyxy in the original image's pixels, with label index,
    class name and score, after the config's test settings (threshold, NMS, cap).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    transforms = build_transforms(False, img_scale=cfg.data.img_scale)
    written = []
    model.eval()
    for path in images:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: image not found")
        image = decode_image(path)
        sample = transforms({"image": image, "boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "image_id": 0, "orig_size": tuple(image.shape[-2:])})
        batch = collate([sample]).to(device)
        outputs = model(batch.images)
        (det,) = postprocess(
            outputs, cfg.test.nms_pre, cfg.test.score_thr, cfg.test.nms_iou, cfg.test.max_per_img, batch.scale_factors, batch.orig_sizes,
            batch.img_sizes,
        )
        names = class_names or [str(i) for i in range(cfg.model.num_classes)]
        records = [
            {"box_xyxy": [round(float(v), 2) for v in box], "label": int(lab), "class": names[int(lab)], "score": round(float(sc), 4)}
            for box, sc, lab in zip(det.boxes.cpu(), det.scores.cpu(), det.labels.cpu())
        ]
        json_path = out_dir / f"{path.stem}.json"
        json_path.write_text(json.dumps({"image": str(path), "detections": records}, indent=2))
        png_path = out_dir / f"{path.stem}.png"
        draw_detections(image, records).save(png_path)
        written += [json_path, png_path]
    return written


def draw_detections(image: torch.Tensor, records: list[dict]) -> Image.Image:
    """uint8 ``(3, H, W)`` image with boxes and ``class score`` labels drawn on it."""
    pil = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
    draw = ImageDraw.Draw(pil)
    for r in records:
        color = PALETTE[r["label"] % len(PALETTE)]
        draw.rectangle(r["box_xyxy"], outline=color, width=2)
        draw.text((r["box_xyxy"][0] + 2, r["box_xyxy"][1] + 1), f"{r['class']} {r['score']:.2f}", fill=color)
    return pil
