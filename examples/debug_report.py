"""Step 4: the Debugger/profiler report, with a rule plug-in of your own, with :func:`dogclf.debug.build_report`.

The seed drew the train/eval loss from the Debugger tensors by hand and downloaded SageMaker's ProfilerReport.
:func:`~dogclf.debug.build_report` makes both from any finished job's output folder, offline: the loss plot, the
rules table (each rule evaluated afresh on the saved tensors), step-duration statistics and system usage.

Rules are plug-ins. This example registers one in-process (``HeadWeightsTooLarge``) and evaluates it next to
the built-ins on a finished job; to run a rule *during* training, install it in the ``dogclf.rules`` entry-point
group (see the "Writing a rule plug-in" page of the docs)::

    python examples/debug_report.py --job-output runs/train/backend/jobs/<job>/output/data
    python examples/debug_report.py                    # trains a tiny job first
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("SMDEBUG_LOG_LEVEL", "error")  # smdebug logs each rule invocation at INFO

from dogclf.debug import TensorRule, build_report, register_rule  # noqa: E402


@register_rule("HeadWeightsTooLarge", overwrite=True)
class HeadWeightsTooLarge(TensorRule):
    """Fires when any saved weight exceeds ``limit`` in absolute value (with ``--freeze head``, the head's)."""

    defaults = {"limit": 10.0}
    description = "Checks that the new head's weights stay small."
    recommendation = "Lower the learning rate or add weight decay."

    def check(self, step):
        names = self.names_at(step, regex=r"^(?!gradient/).*weight$")  # weights, not their gradients
        if not names:
            return None                                    # nothing to judge at this step
        biggest = max(float(abs(self.value(name, step)).max()) for name in names)
        return {"max_abs": biggest} if biggest > self.parameters["limit"] else False


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/report"), help="folder for the outputs")
    p.add_argument("--job-output", type=Path, default=None,
                   help="a finished job's output data folder (default: train a tiny job first)")
    p.add_argument("--limit", type=float, default=0.05, help="HeadWeightsTooLarge's limit")
    p.add_argument("--tiny", action="store_true", help="the smallest run (CI)")
    args = p.parse_args(argv)

    output = args.job_output
    if output is None:
        import train_with_debugger  # the previous step's example, beside this file

        train_with_debugger.main(["--out", str(args.out / "train"), "--tiny"])
        jobs = sorted((args.out / "train" / "backend" / "jobs").iterdir(), key=lambda p: p.stat().st_mtime)
        output = jobs[-1] / "output" / "data"

    report = build_report(
        output, args.out / "debug-report.html",
        rules=["LossNotDecreasing", "Overfit", "ExplodingTensor",
               {"name": "HeadWeightsTooLarge", "parameters": {"limit": args.limit}}],
        summary={"job output": str(output)},
    )
    print(f"report {report.html_path}")
    for name, png in report.images.items():
        print(f"  figure {name:15s} {png}")
    print(f"  step durations: {', '.join(f'{k}={v:.4f}s' for k, v in list(report.step_stats.items())[:4])}")
    mine = report.finding("HeadWeightsTooLarge")
    print(f"  HeadWeightsTooLarge: {'fired' if mine.triggered else 'quiet'} on {mine.datapoints} datapoints, "
          f"evidence {mine.evidence}")
    print(f"  rules that fired: {', '.join(report.triggered) or 'none'}")


if __name__ == "__main__":
    main()
