"""``handreid-train``: train one configuration and print its validation and test results."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from handreid.cli_util import one_line_errors, setup_logging
from handreid.config import load_config, parse_set_args

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="handreid-train", description=__doc__)
    parser.add_argument("--config", help="YAML config (default: built-in defaults)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set loss.arcface.margin=0.3",
    )
    parser.add_argument("--out", default=None, help="run directory (default runs/train/<name>)")
    parser.add_argument("--cpu", action="store_true", help="force the CPU")
    parser.add_argument("--no-test", action="store_true", help="skip the final test evaluation")
    return parser


def format_results(result: dict) -> str:
    lines = [
        f"status: {result['status']}   epochs: {result['epochs']}   best epoch: "
        f"{result['best_epoch']}   stage 1: {result.get('stage1_cache', '-')}"
    ]
    lines.append(f"{'':10}{'Rank-1':>10}{'Rank-5':>10}{'Rank-10':>10}{'mAP':>10}")
    lines.append(
        f"{'val':10}{result['val_rank1']:>10.2f}{'':>10}{'':>10}{result['val_mAP']:>10.2f}"
    )
    test = result.get("test")
    if test:
        cells = "".join(
            f"{test[k]:>6.2f}±{test[k + '_std']:<4.1f}" for k in ("rank1", "rank5", "rank10", "mAP")
        )
        lines.append(f"{'test':10}{cells}")
        lines.append(
            f"(test: mean ± std over {len(test['per_split'])} splits, protocol "
            f"{test['protocol']}, {test['dropped_ids']} single-image ids dropped)"
        )
    return "\n".join(lines)


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    overrides = parse_set_args(args.overrides)
    if args.cpu:
        overrides["train.cpu"] = True
    cfg = load_config(args.config, overrides)
    # heavy: after the config
    from handreid.train.checkpoint import METRICS, finished_run
    from handreid.train.trainer import train

    name = Path(args.config).stem if args.config else "default"
    out = Path(args.out or Path("runs") / "train" / name)
    done = finished_run(cfg, out, with_test=not args.no_test)
    if done is not None:  # neither trained nor scored again
        print(
            f"run complete ({done['status']} after {done['epochs']} epochs): "
            f"results in {out / METRICS}"
        )
        return 0
    result = train(cfg, out, evaluate_on_test=not args.no_test)
    print(format_results(result))
    print(f"run directory: {out}")
    return 0 if result["status"] in ("done", "early_stopped") else 1


if __name__ == "__main__":
    raise SystemExit(main())
