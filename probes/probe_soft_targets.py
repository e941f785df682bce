"""How strongly the soft-target rows pull their positives up at the start of training.

    python probes/probe_soft_targets.py [--batches 5] [--row "ATSS + QFL"] [--checkpoint PT]

For a row of Table 2 (default: ATSS + QFL, the GFL recipe, which has no warm-up), on its model
at initialisation (pre-trained backbone, the row's seed 0; or the weights of ``--checkpoint``)
and the first ``--batches`` training batches of the proxy: the soft targets of its positives
(IoU of the predicted box with the GT) and the gradient of the classification loss on the
positives' logits, under the quality focal loss with those targets and under the focal loss
with hard targets (what ATSS trains with). Both rows divide by the number of positives, so
the ratio of the two is how much weaker the soft row's pull on its positives is. Writes
probes/results/probe_soft_targets.json (``--checkpoint``: probe_soft_targets_<name>.json).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestration.grid import expand_grid  # noqa: E402
from tood.build import build_criterion, build_model, model_from_checkpoint  # noqa: E402
from tood.config import build_config  # noqa: E402
from tood.data.loaders import build_loader  # noqa: E402
from tood.losses import focal_loss, quality_focal_loss  # noqa: E402
from tood.model.pretrain import ensure_pretrained_backbone  # noqa: E402


def positive_pull(logits: torch.Tensor, onehot: torch.Tensor, soft: torch.Tensor, fg: torch.Tensor) -> tuple[float, float]:
    """Mean |d loss / d logit| over the positives' GT-class logits, under QFL with targets
    ``onehot * soft`` and under focal loss with ``onehot`` (both summed, per positive)."""
    pulls = []
    for loss_fn, target in ((quality_focal_loss, onehot * soft[..., None]), (focal_loss, onehot)):
        x = logits.detach().clone().requires_grad_(True)
        loss_fn(x, target).sum().backward()
        pulls.append(float((x.grad * onehot).sum(-1)[fg].abs().mean()))
    return pulls[0], pulls[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--row", default="ATSS + QFL")
    p.add_argument("--checkpoint", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    specs = [s for s in expand_grid(ROOT / "experiments/table2_assign.yaml", seeds=[0]) if s.row_label == args.row]
    if not specs:
        print(f"error: experiments/table2_assign.yaml has no row {args.row!r}", file=sys.stderr)
        return 2
    cfg = build_config(specs[0].config, "probe", overrides={"train.device": "cpu"})
    ensure_pretrained_backbone(cfg)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model) if args.checkpoint is None else model_from_checkpoint(cfg, args.checkpoint)[0]
    model.train()  # batch statistics, as in training
    criterion = build_criterion(cfg)
    phase = criterion.main
    targets, qfl, focal = [], [], []
    for i, b in enumerate(build_loader(cfg, train=True)):
        if i == args.batches:
            break
        with torch.no_grad():
            out = model(b.images)
            res = phase.assigner(out["priors"], out["cls_logits"].sigmoid(), out["boxes"], b.gt_boxes, b.gt_labels, b.gt_mask)
        onehot = F.one_hot(res.labels.clamp(min=0), cfg.model.num_classes + 1)[..., : cfg.model.num_classes].float()
        q, f = positive_pull(out["cls_logits"].float(), onehot, res.scores, res.fg_mask)
        targets += res.scores[res.fg_mask].tolist()
        qfl.append(q)
        focal.append(f)
    t = torch.tensor(targets)
    result = {
        "row": args.row, "checkpoint": str(args.checkpoint) if args.checkpoint else None, "batches": len(qfl),
        "positives": len(targets), "soft_target_mean": float(t.mean()), "soft_target_median": float(t.median()),
        "soft_target_p90": float(t.quantile(0.9)),
        "pull_qfl": sum(qfl) / len(qfl), "pull_focal_hard": sum(focal) / len(focal),
        "focal_over_qfl": sum(focal) / sum(qfl),
    }
    name = f"probe_soft_targets_{args.checkpoint.parent.parent.name}" if args.checkpoint else "probe_soft_targets"
    path = ROOT / f"probes/results/{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
