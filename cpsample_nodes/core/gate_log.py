"""What the guard's gate did during one sampling run: which samples it opened on, at which steps, how far.

The host glue calls ``record`` with the x0 prediction before and after ``Guard.guide`` on each model
evaluation; an item whose prediction changed is one the gate opened on (the guard was confident about
it), and the root-mean-square of the change is the push. Pure torch, no host imports, so the ComfyUI
and the A1111/Forge glue share it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class _Step:
    sigma: float
    evaluations: int = 0
    opened: set[int] = field(default_factory=set)  # batch indices moved at this step
    push_sum: float = 0.0  # sum of per-item push RMS over opened items and evaluations
    push_n: int = 0
    push_max: float = 0.0


class GateLog:
    """Accumulates one run; ``reset`` at its start (with the run's σ schedule when known)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self, sigmas: Tensor | None = None) -> None:
        # The schedule maps a σ to its step index; without it each new σ starts the next step.
        self.schedule: list[float] | None = None
        if sigmas is not None:
            self.schedule = [float(s) for s in sigmas.detach().float().reshape(-1).cpu()]
        self.samples = 0
        self.opened: set[int] = set()
        self.steps: dict[int, _Step] = {}
        self._last_sigma: float | None = None
        self._next = 0

    def _step_of(self, sigma: float) -> int:
        if self.schedule:
            ls = math.log(max(sigma, 1e-12))
            return min(range(len(self.schedule)), key=lambda i: abs(math.log(max(self.schedule[i], 1e-12)) - ls))
        if self._last_sigma is None or not math.isclose(sigma, self._last_sigma, rel_tol=1e-6, abs_tol=1e-9):
            self._last_sigma = sigma
            self._next += 1
        return self._next - 1

    @torch.no_grad()
    def record(self, sigma: Tensor | float, before: Tensor, after: Tensor) -> None:
        """One evaluation: ``before``/``after`` are the x0 predictions [B, ...] around the guide."""
        if before.shape != after.shape or before.dim() < 1:
            raise ValueError(f"before and after must have one shape [B, ...], got {tuple(before.shape)} "
                             f"and {tuple(after.shape)}")
        b = before.shape[0]
        self.samples = max(self.samples, b)
        s = torch.as_tensor(sigma).detach().float().reshape(-1).cpu()
        s0 = float(s.max()) if s.numel() else float("nan")  # one σ per evaluation for every sampler here
        step = self.steps.setdefault(self._step_of(s0), _Step(sigma=s0))
        step.evaluations += 1
        if after is before:
            return
        diff = (after.detach().float() - before.detach().to(after.device).float()).flatten(1)
        push = diff.pow(2).mean(1).sqrt().cpu()
        moved = (diff.abs().amax(1) > 0).cpu()
        for i in torch.nonzero(moved).flatten().tolist():
            step.opened.add(i)
            self.opened.add(i)
            step.push_sum += float(push[i])
            step.push_n += 1
            step.push_max = max(step.push_max, float(push[i]))

    def summary(self) -> dict[str, Any]:
        """JSON-ready: samples, opened_samples, total_steps, opened_steps, and per evaluated step its σ,
        how many samples the gate opened on and the mean push (RMS per element) and push / σ."""
        per_step = []
        for i in sorted(self.steps):
            st = self.steps[i]
            mean = st.push_sum / st.push_n if st.push_n else 0.0
            per_step.append({"step": i, "sigma": round(st.sigma, 5), "opened": len(st.opened),
                             "push": round(mean, 5), "push_max": round(st.push_max, 5),
                             "push_over_sigma": round(mean / st.sigma, 4) if st.sigma > 0 else None})
        opened_steps = [p["step"] for p in per_step if p["opened"]]
        pushes = [p["push"] for p in per_step if p["opened"]]
        ratios = [p["push_over_sigma"] for p in per_step if p["opened"] and p["push_over_sigma"] is not None]
        total = len(self.schedule) - 1 if self.schedule and len(self.schedule) > 1 else len(per_step)
        return {"samples": self.samples, "opened_samples": len(self.opened), "total_steps": total,
                "evaluated_steps": len(per_step), "opened_steps": opened_steps,
                "mean_push": round(sum(pushes) / len(pushes), 5) if pushes else 0.0,
                "mean_push_over_sigma": round(sum(ratios) / len(ratios), 4) if ratios else 0.0,
                "per_step": per_step}


def _ranges(steps: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    out: list[str] = []
    for s in steps:
        if out and s == int(out[-1].split("-")[-1]) + 1:
            out[-1] = f"{out[-1].split('-')[0]}-{s}"
        else:
            out.append(str(s))
    return ", ".join(out)


def describe(summary: dict[str, Any]) -> str:
    """One line for people and logs, e.g. 'gate opened on 2 of 4 samples, in steps 3-9 of 20; mean push
    0.12 (0.31 σ)'."""
    n, total = summary["opened_samples"], summary["samples"]
    if not summary["evaluated_steps"]:
        return f"gate never evaluated ({total} samples; no step inside the σ window)"
    if not n:
        guided = summary["evaluated_steps"]
        return (f"gate opened on 0 of {total} samples in {guided} guided step{'s' if guided > 1 else ''} of "
                f"{summary['total_steps']}: the guard was not confident about any of them")
    steps = summary["opened_steps"]
    return (f"gate opened on {n} of {total} samples, in step{'s' if len(steps) > 1 else ''} {_ranges(steps)} of "
            f"{summary['total_steps']}; mean push {summary['mean_push']:.3g} per element "
            f"({summary['mean_push_over_sigma']:.2f} σ)")
