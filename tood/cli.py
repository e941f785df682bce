"""``tood`` command line: train, eval, detect, data synth."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tood.config import Config, ConfigError, load_config, to_dict

EXIT_USER_ERROR = 2


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config, e.g. experiments/base.yaml")
    p.add_argument("--profile", help="profile of the config to apply (e.g. proxy, coco)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. train.lr=0.02 (repeatable)")


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config, profile=args.profile, overrides=args.overrides)


def cmd_train(args: argparse.Namespace) -> int:
    import yaml

    from tood.engine import train

    cfg = _load(args)
    work_dir = Path(args.work_dir or Path("runs") / cfg.name)
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))

    def log(metrics: dict, step: int) -> None:
        if args.quiet:
            return
        shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        print(f"[epoch {step}] {shown}", flush=True)

    result = train(cfg, work_dir, resume=args.resume, log=log, progress=not args.quiet)
    (work_dir / "metrics.json").write_text(json.dumps(result.metrics, indent=2))
    print(f"checkpoint: {result.checkpoint}\nmetrics: {work_dir / 'metrics.json'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from tood.build import model_from_checkpoint
    from tood.data.loaders import build_loader
    from tood.evaluate import evaluate

    cfg = _load(args)
    model, device, _ = model_from_checkpoint(cfg, args.checkpoint)
    metrics = evaluate(model, build_loader(cfg, train=False), cfg, device, progress=not args.quiet)
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    from tood.build import model_from_checkpoint
    from tood.detect import detect_images

    from tood.config import validate_config

    cfg = _load(args)
    if args.score_thr is not None:
        cfg.test.score_thr = args.score_thr
        validate_config(cfg, "--score-thr:")
    model, device, class_names = model_from_checkpoint(cfg, args.checkpoint)
    for path in detect_images(model, cfg, device, [Path(p) for p in args.images], Path(args.out), class_names=class_names):
        print(path)
    return 0


def cmd_synth(argv: list[str]) -> int:
    from tood.data.synthetic import main as synth_main

    return synth_main(argv) or 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tood", description="TOOD: task-aligned one-stage object detection")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a detector from a YAML config")
    _add_config_args(p)
    p.add_argument("--resume", nargs="?", const=True, default=False, help="resume from WORK_DIR/last.pt or the given checkpoint")
    p.add_argument("--work-dir", help="output folder (default runs/<name>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("eval", help="COCO AP and alignment measures of a checkpoint on the validation set")
    _add_config_args(p)
    p.add_argument("checkpoint")
    p.add_argument("--out", help="write the metrics JSON here too")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("detect", help="detect objects in images; writes <name>.json and <name>.png per image")
    _add_config_args(p)
    p.add_argument("checkpoint")
    p.add_argument("images", nargs="+")
    p.add_argument("--out", default="detections", help="output folder (default ./detections)")
    p.add_argument("--score-thr", type=float, help="drop detections below this score (default: config test.score_thr)")
    p.set_defaults(fn=cmd_detect)

    p = sub.add_parser("data", help="dataset tools")
    dsub = p.add_subparsers(dest="data_command", required=True)
    dsub.add_parser("synth", help="write the synthetic COCO-format proxy dataset (see `tood data synth --help`)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["data", "synth"]:
        handler = lambda: cmd_synth(argv[2:])  # noqa: E731 - its own argparse owns the options
    else:
        args = build_parser().parse_args(argv)
        handler = lambda: args.fn(args)  # noqa: E731
    from tood.data.coco import DatasetError
    from tood.engine import NonFiniteLossError

    try:
        return handler()
    except (ConfigError, DatasetError, FileNotFoundError, NonFiniteLossError, ValueError) as e:
        if os.environ.get("TOOD_DEBUG"):
            raise
        print(f"tood: error: {e}\n(set TOOD_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
