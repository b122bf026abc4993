"""The ``weakseg`` command.

    weakseg data {trainaug,scribbles,context,simulate-scribbles,synth,image-labels} ...
    weakseg train CONFIG [--set key=value ...] [--resume [CKPT]]
    weakseg run CONFIG [--from STAGE] [--only STAGE] [--force]
    weakseg eval  --ckpt CKPT [--set key=value ...] [--crf PRESET] [--out DIR]
    weakseg predict IMAGE_OR_DIR... --ckpt CKPT --out DIR [--crf PRESET] [--overlay] [--probs]
    weakseg export --ckpt CKPT --onnx FILE
    weakseg demo [--out DIR] [--quick] [--readme README.md]
    weakseg annotate IMAGES --classes classes.txt --out LABELS [--ckpt CKPT]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from weakseg import __version__

log = logging.getLogger("weakseg")


def _add_eval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scales", type=float, nargs="+", help="test scales (eval.scales)")
    p.add_argument("--flip", action="store_true", default=None, help="add flipped passes (eval.flip)")
    p.add_argument("--average", choices=("logit", "prob"), help="what is averaged over scales/flips")
    p.add_argument("--mode", choices=("whole", "slide"), help="whole-image or sliding-window inference")
    p.add_argument("--crf", metavar="PRESET", help="dense CRF preset (blpseg, bes_label, bes_semseg, deeplabv2, "
                                                   "webcoseg); 'none' switches it off")
    p.add_argument("--crf-workers", type=int, default=2, help="processes running the CRF (default 2)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (engine.device)")


def _eval_overrides(args) -> list[str]:
    out = list(args.set or [])
    if args.scales:
        out.append(f"eval.scales=[{','.join(map(str, args.scales))}]")
    if args.flip:
        out.append("eval.flip=true")
    if args.average:
        out.append(f"eval.average={args.average}")
    if args.mode:
        out.append(f"eval.mode={args.mode}")
    if args.crf:
        out.append("eval.crf=null" if args.crf.lower() == "none" else f"eval.crf={args.crf}")
    if args.device:
        out.append(f"engine.device={args.device}")
    return out


def cmd_train(args) -> int:
    from weakseg.engine.config import load_config
    from weakseg.engine.trainer import train

    cfg = load_config(args.config, args.set)
    resume: bool | str = False
    if args.resume is not None:
        resume = True if args.resume == "" else args.resume
    result = train(cfg, resume=resume, evaluate_after=not args.no_eval)
    if "metrics" in result:
        print(f"mIoU {100 * result['metrics']['miou']:.2f}  checkpoint {result['checkpoint']}")
    return 0


def cmd_eval(args) -> int:
    from weakseg.engine import builders
    from weakseg.engine.amp import autocast_dtype
    from weakseg.engine.config import resolve_work_dir
    from weakseg.engine.evaluator import evaluate
    from weakseg.engine.runtime import setup_logging
    from weakseg.utils import dist as wdist

    cfg, method, meta = builders.load_trained(args.ckpt, _eval_overrides(args), args.config)
    device = wdist.init_distributed(cfg.engine.device)
    out = Path(args.out) if args.out else resolve_work_dir(cfg) / "eval"
    setup_logging(out, "eval.log")
    dataset = builders.build_eval_dataset(cfg, meta, list_file=args.list)
    if len(dataset) == 0:
        raise ValueError(f"{args.list or cfg.data.val_list}: empty evaluation list")
    method.to(device)
    metrics = evaluate(method, dataset, cfg.eval, meta, out, device, mean=cfg.data.mean, std=cfg.data.std,
                       amp_dtype=autocast_dtype(cfg.eval.amp, device), crf_workers=args.crf_workers)
    if wdist.is_main():
        print(f"mIoU {100 * metrics['miou']:.2f} over {metrics['images']} images; report: {out / 'report.md'}")
    return 0


def cmd_predict(args) -> int:
    from weakseg.engine import builders
    from weakseg.engine.amp import autocast_dtype
    from weakseg.engine.predictor import predict_images
    from weakseg.engine.runtime import setup_logging
    from weakseg.utils import dist as wdist

    cfg, method, meta = builders.load_trained(args.ckpt, _eval_overrides(args), args.config)
    device = wdist.init_distributed(cfg.engine.device)
    setup_logging(None)
    method.to(device)
    counts = predict_images(method, meta, args.inputs, Path(args.out), ev=cfg.eval, mean=cfg.data.mean,
                            std=cfg.data.std, device=device, amp_dtype=autocast_dtype(cfg.eval.amp, device),
                            batch_size=args.batch_size, save_overlay=args.overlay, save_probs=args.probs,
                            crf_workers=args.crf_workers, overwrite=args.overwrite, skip_bad=args.skip_bad)
    bad = f", {counts['bad']} unreadable skipped" if counts["bad"] else ""
    print(f"{counts['done']} predicted, {counts['skipped']} already done{bad}; output: {args.out}")
    return 0


def cmd_run(args) -> int:
    from weakseg.engine.config import load_config
    from weakseg.engine.pipeline import run_pipeline
    from weakseg.utils import dist as wdist

    cfg = load_config(args.config, args.set)
    if args.status:
        from weakseg.engine.pipeline import stage_status

        for row in stage_status(cfg):
            section = f"  [{row['section']}]" if row["section"] else ""
            why = f": {row['why']}" if row["why"] else ""
            print(f"{row['name']:22s} {row['state']}{why}{section}\n{'':22s} {row['doc']}")
        return 0
    summary = run_pipeline(cfg, from_stage=args.from_stage, only=args.only, force=args.force)  # holds the lock
    if wdist.is_main():
        for name, info in summary.items():
            extra = f"  mIoU {100 * info['miou']:.2f}" if info.get("miou") is not None else ""
            print(f"{name}: done{extra}")
    return 0


def cmd_export(args) -> int:
    from weakseg.engine import builders
    from weakseg.engine.export import check_onnx, export_onnx

    _, method, _ = builders.load_trained(args.ckpt, args.set, args.config)
    path = export_onnx(method, Path(args.onnx), sample_size=(args.height, args.width), opset=args.opset)
    diff = check_onnx(method, path, sizes=((1, args.height, args.width), (2, args.height + 32, args.width - 32)))
    print(f"exported {path} (opset {args.opset}, dynamic batch/height/width); max |onnx - torch| = {diff:.2e}")
    if diff > 1e-3:
        print(f"weakseg export: error: ONNX and PyTorch outputs differ by {diff:.2e} (> 1e-3)", file=sys.stderr)
        return 1
    return 0


def cmd_demo(args) -> int:
    from weakseg.engine.demo import run_demo

    page = run_demo(Path(args.out), quick=args.quick, readme=Path(args.readme) if args.readme else None)
    print(f"demo report: {page.resolve()}  (and {page.with_suffix('.md').name} next to it)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from weakseg.cli.data import add_data_commands

    parser = argparse.ArgumentParser(prog="weakseg", description="Weakly supervised semantic segmentation toolkit")
    parser.add_argument("--version", action="version", version=f"weakseg {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also: environment WEAKSEG_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    add_data_commands(sub)

    p = sub.add_parser("train", help="train a method from a YAML preset")
    p.add_argument("config", help="preset YAML (configs/...)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="CKPT",
                   help="continue from the newest checkpoint of the work dir (or from CKPT)")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("run", help="run the stages of a multi-stage method (BES/SBE, CDSP, WebCoseg)")
    p.add_argument("config", help="preset YAML (configs/...)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument("--from", dest="from_stage", metavar="STAGE", help="start at this stage")
    p.add_argument("--only", action="append", metavar="STAGE", help="run only this stage (repeatable)")
    p.add_argument("--force", action="store_true", help="redo the selected stages even if they are complete")
    p.add_argument("--status", action="store_true", help="list the stages, whether each is complete, stale (and "
                                                        "which value changed) or not run; runs nothing")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("eval", help="evaluate a trained checkpoint (mIoU, per-class IoU, report)")
    p.add_argument("--ckpt", required=True, help="checkpoint (model_final.pth or iter_*.pth)")
    p.add_argument("--config", help="preset to use instead of the config stored in the checkpoint")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument("--list", help="id list to evaluate (default data.val_list)")
    p.add_argument("--out", help="output folder (default <work_dir>/eval)")
    _add_eval_options(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="predict label maps for images, folders or list files")
    p.add_argument("inputs", nargs="+", help="image files, folders of images, or .txt lists of image paths")
    p.add_argument("--ckpt", required=True, help="checkpoint")
    p.add_argument("--config", help="preset to use instead of the config stored in the checkpoint")
    p.add_argument("--out", required=True, help="output folder (<id>.png palette label maps)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass (same-size images)")
    p.add_argument("--overlay", action="store_true", help="also write overlays/<id>.jpg")
    p.add_argument("--probs", action="store_true", help="also write probs/<id>.npy (C×H×W float16)")
    p.add_argument("--overwrite", action="store_true", help="redo images whose output exists")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable images (counted and listed) instead of stopping at the first one")
    _add_eval_options(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export a trained model to ONNX (dynamic image size), checked with onnxruntime")
    p.add_argument("--ckpt", required=True, help="checkpoint")
    p.add_argument("--onnx", required=True, metavar="FILE", help="output .onnx file")
    p.add_argument("--config", help="preset to use instead of the config stored in the checkpoint")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--height", type=int, default=128, help="height of the tracing/check input (default 128)")
    p.add_argument("--width", type=int, default=160, help="width of the tracing/check input (default 160)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", help="demo data → every method on CPU with one network and budget → HTML report")
    p.add_argument("--out", default="work_dirs/demo", help="output folder (default work_dirs/demo)")
    p.add_argument("--quick", action="store_true",
                   help="a much shorter run of the single-stage methods only (smoke test)")
    p.add_argument("--readme", metavar="FILE",
                   help="also write the results table into FILE's <!-- demo-results --> section (e.g. README.md)")
    p.set_defaults(func=cmd_demo)

    from weakseg.annotate.cli import add_annotate_command

    add_annotate_command(sub)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's input or environment, shown as one line: bad configs and data (ConfigError and
    DataError are ValueErrors), files that are missing or cannot be written (OSError), a busy work folder, a
    non-finite loss."""
    from weakseg.engine.runtime import WorkDirBusy

    return ValueError, OSError, WorkDirBusy, FloatingPointError


def main(argv: list[str] | None = None) -> int:
    """Run the ``weakseg`` command; a user-facing error is printed as ``weakseg: error: <message>`` (exit code 2)
    without a traceback, unless ``--debug`` or ``WEAKSEG_DEBUG=1`` asks for it."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("WEAKSEG_DEBUG", "") not in ("", "0")
    from weakseg.engine.runtime import unwrap_worker_error

    try:
        return int(args.func(args) or 0)
    except _user_errors() as exc:
        if debug:
            raise
        print(f"weakseg: error: {unwrap_worker_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
