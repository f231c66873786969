"""The stop-rule trial (docs/design-log.md, "Confidence up to σ 0.3"): the demo or one calibration run
with the guard trained under one of four stop rules, patched into ``cpsample_nodes.core.training``.

  old       right and confident (p ≥ 0.99) in every band σ ≤ 1 (vp) / 0.5 (flow): the rule before ba34d45
  product   right in every band σ ≤ 1 / 0.5, confident up to σ 0.3 / 0.25 (ba34d45, the product's rule)
  decay     the product's rule, and the learning rate ×0.8 at each check that finds every band right but
            the guard not done (floor 1/64 of the start)
  right     right in every band σ ≤ 1 / 0.5, no confidence asked

  python -m benchmarks.stop_rule_trial RULE demo --guard-seed S --out STEM --png STEM.png
  python -m benchmarks.stop_rule_trial RULE calibration --only-calibrated --bench mixture-vp ...
"""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

from cpsample_nodes.core import training as T

RULES = ("old", "product", "decay", "right")


def apply(rule: str) -> None:
    if rule == "old":
        T.confident_bands = T.required_bands
    elif rule == "right":
        T.confident_bands = lambda space: []
    elif rule == "decay":
        optimiser = {}
        step, passes = T.training_step, T.StopCheck.passes

        def remembering_step(guard, opt, *batch):
            optimiser["opt"] = opt
            return step(guard, opt, *batch)

        def decaying_passes(self, guard):
            done = passes(self, guard)
            mark = T.TARGET_ACCURACY if T.lg.count(self.latents) <= T.CHECK_SUBSET else T.SCREEN_ACCURACY
            if not done and all(self.accuracy.get(b, 0.0) >= mark for b in self.required):
                for group in optimiser["opt"].param_groups:
                    group["lr"] = max(group["lr"] * 0.8, T.LEARNING_RATE / 64)
            return done

        T.training_step, T.StopCheck.passes = remembering_step, decaying_passes
    elif rule != "product":
        raise SystemExit(f"rule must be one of {', '.join(RULES)}, got {rule!r}")


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[2] not in ("demo", "calibration"):
        raise SystemExit(__doc__)
    rule, what, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
    apply(rule)
    if what == "demo":
        from benchmarks.finetune import demo
        demo.main(rest)
    else:
        script = Path(__file__).with_name("calibration.py")
        sys.path.insert(0, str(script.parent))
        sys.argv = [str(script), *rest]
        runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
