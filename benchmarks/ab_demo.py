"""The README's `tfrec-ab` report: two tfrec servers on one zoo model, compared as a user would.

A serves the model as a stock server would (stock flags, flat requests). B gets every tfrec
feature available: with `saved_model_tools.convert` importable, the converted model and
structured requests (`--b-structured`); without it, the same server and model, so the run is
an A/A test that shows the tool's own noise floor. Each load point (gRPC at concurrency 1 and
4, REST at 1 when `server/rest.py` exists) runs `tfrec-ab` in a subprocess; its JSON, markdown
and CDF plot land in `results/ab-<date>/<protocol>-c<concurrency>/`, and the tables in
`README.md` (section `ab`).

    python benchmarks/ab_demo.py [--model din] [--scale full] [--duration 20]
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import report  # noqa: E402
from benchmarks.arms import convert  # noqa: E402
from benchmarks.models import NAMES, Sidecar, export  # noqa: E402
from benchmarks.servers import TfrecServer, rest_available  # noqa: E402
from benchmarks.workloads import Workload, write_tfrecord  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SIZES = (100, 500, 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=NAMES, default="din")
    parser.add_argument("--scale", choices=["full", "tiny"], default="full")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per arm")
    parser.add_argument("--requests", type=int, default=24, help="N cycles 100, 500, 1000")
    args = parser.parse_args()
    out = RESULTS.relative_to(ROOT) / f"ab-{dt.date.today().isoformat()}"
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tfrec-ab-demo-") as tmp:
        version_dir = export(args.model, args.scale, Path(tmp) / "original", check=False).path
        converted = convert(version_dir, Path(tmp) / "converted" / args.model / "1", notes)
        user = Sidecar.read(version_dir).user_inputs if converted else []
        requests = Path(tmp) / "requests.tfrecord"
        workload = Workload.load(version_dir)
        write_tfrecord(requests, workload.predict_requests(SIZES, args.requests, 0))
        b_base = (converted.path if converted else version_dir).parent
        rest = rest_available()
        if not rest:
            notes.append("REST skipped: server/rest.py does not exist yet")
        with (
            TfrecServer({args.model: version_dir.parent}, rest=rest) as a,
            TfrecServer({args.model: b_base}, rest=rest) as b,
        ):
            points = [("grpc", 1, a.address, b.address), ("grpc", 4, a.address, b.address)]
            if rest:
                points.append(("rest", 1, a.rest_address, b.rest_address))
            for protocol, concurrency, address_a, address_b in points:
                command = [
                    str(Path(sys.executable).parent / "tfrec-ab"),
                    f"--a={address_a}",
                    f"--b={address_b}",
                    f"--model={args.model}",
                    f"--requests={requests}",
                    f"--protocol={protocol}",
                    f"--concurrency={concurrency}",
                    f"--duration={args.duration}",
                    f"--out={out / f'{protocol}-c{concurrency}'}",
                ]
                if converted:
                    command += ["--b-structured", f"--b-model-dir={converted.path}"]
                print(" ".join(command[1:]), file=sys.stderr, flush=True)
                subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    text = readme_text(args.model, args.scale, args.requests, user, ROOT / out, notes)
    report.update_readme("ab", text.replace(tmp, "$TMP"))
    print(text)


def readme_text(
    model: str, scale: str, requests: int, user: list[str], out: Path, notes: list[str]
) -> str:
    """The README section: what A and B were, then each load point's tfrec-ab table."""
    lead = f"`{model}` at {scale} scale, {requests} requests with N cycling "
    lead += f"{', '.join(map(str, SIZES))}. A: stock flags, flat requests. " + (
        f"B: the converted model, structured requests (user inputs: {', '.join(user)})."
        if user
        else "B: the same server and model (no converter yet), so this is an A/A run: it "
        "shows the tool's noise floor on this shared machine."
    )
    tables = [(point / "ab.md").read_text().strip() for point in sorted(out.iterdir())]
    return "\n\n".join([lead, *tables, *(f"Note: {n}." for n in dict.fromkeys(notes))])


if __name__ == "__main__":
    main()
