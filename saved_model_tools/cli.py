"""tfrec-convert SRC DST --user-inputs NAME[,NAME...] [--signatures SIG,...]
[--infer-user-inputs REQUESTS.tfrecord] [--no-decompose] [--report] [--schedule]

Writes DST, a new version directory: SRC's SavedModel with every signature unchanged plus a
structured twin `<sig>_structured` whose per-user inputs take one row and per-item inputs N
rows; verified against the original before anything is written.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import TextIO

BAR = 30


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected NAME[,NAME...]")
    return names


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tfrec-convert",
        description="Add structured (one user, N candidates) twins to a serving SavedModel.",
    )
    p.add_argument("src", help="the SavedModel (version directory) to convert")
    p.add_argument("dst", help="the new version directory to write")
    p.add_argument(
        "--user-inputs",
        type=_names,
        metavar="NAME[,NAME...]",
        help="signature inputs that are per-user (one row per request)",
    )
    p.add_argument(
        "--signatures",
        type=_names,
        metavar="SIG[,SIG...]",
        help="signatures to convert (default: serving_default)",
    )
    p.add_argument(
        "--infer-user-inputs",
        metavar="REQUESTS.tfrecord",
        help="propose the user inputs from sample flat requests (PredictionLog "
        "TFRecord, TF-Serving's warmup format): inputs whose rows repeat",
    )
    p.add_argument(
        "--no-decompose",
        action="store_true",
        help="do not split linear maps over concat([user, item]) into two halves",
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="print what was done and write an HTML report with a picture of the "
        "partitioned graph into DST/assets.extra",
    )
    p.add_argument(
        "--schedule",
        action="store_true",
        help="also profile the new version's operator costs and explain the schedule "
        "tfrec_model_server would build (critical path, per-slot order, predicted against "
        "measured time: `tfrec-schedule explain`); printed, and in the report with --report",
    )
    return p


class ProgressBar:
    """One line redrawn in place on a terminal; one line per stage otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.last = ""
        self.start = time.perf_counter()

    def __call__(self, what: str, fraction: float) -> None:
        if self.tty:
            filled = int(BAR * fraction)
            elapsed = time.perf_counter() - self.start
            line = (
                f"\r[{'#' * filled}{'.' * (BAR - filled)}] {fraction:4.0%} {elapsed:5.1f}s {what}"
            )
            self.stream.write(line.ljust(100)[:100])
            if fraction >= 1.0:
                self.stream.write("\n")
        elif what != self.last:
            self.stream.write(f"tfrec-convert: {what}\n")
        self.last = what
        self.stream.flush()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import warnings

    warnings.filterwarnings("ignore")
    import tensorflow as tf

    from saved_model_tools import ConversionError, convert
    from saved_model_tools.report import summary

    tf.get_logger().setLevel("ERROR")
    try:
        result = convert(
            args.src,
            args.dst,
            args.user_inputs,
            signatures=args.signatures,
            infer_from=args.infer_user_inputs,
            decompose=not args.no_decompose,
            report=args.report,
            schedule=args.schedule,
            progress=ProgressBar(sys.stderr),
        )
    except ConversionError as err:
        print(f"tfrec-convert: error: {err}", file=sys.stderr)
        return 1
    if result.proposed_user_inputs is not None:
        print(f"proposed user inputs: {','.join(result.proposed_user_inputs)}")
        if args.user_inputs and set(args.user_inputs) != set(result.proposed_user_inputs):
            print(f"using the named user inputs: {','.join(result.user_inputs)}")
    if args.report or args.schedule:
        print(summary(result))
    else:
        for stats in result.signatures.values():
            ratio = stats.flop_ratio(1000) if 1000 in stats.flops else float("nan")
            print(
                f"{result.dst}: {stats.structured} ({stats.user_ops} ops per user, "
                f"{stats.item_ops} per item; {ratio:.2f}x fewer FLOPs at N=1000)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
