"""python -m benchmarks.models --model NAME|all --scale tiny|full --out DIR"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from benchmarks.models.scales import SCALES
from benchmarks.models.zoo import NAMES, export


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.models", description=__doc__)
    parser.add_argument("--model", choices=[*NAMES, "all"], default="all")
    parser.add_argument("--scale", choices=list(SCALES), default="tiny")
    parser.add_argument("--out", required=True, help="model base directory; writes OUT/NAME/1")
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument(
        "--no-check", action="store_true", help="skip loading the export back to compare outputs"
    )
    args = parser.parse_args(argv)
    for name in NAMES if args.model == "all" else [args.model]:
        report = export(name, args.scale, args.out, args.version, check=not args.no_check)
        print(report.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
