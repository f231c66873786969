"""The search for the setting that costs least: the ladder of σ windows and gates measured on the
probes, early abandonment, and confirmation on new seeds."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .calibration_ladder import STRENGTHS, describe, ladder
from .calibration_probes import ProbeSampler
from .calibration_report import WEAK_SPOIL
from .calibration_stats import Reference
from .guard import Guard
from .metrics import REPLICA_L2_RATIO

Tensor = torch.Tensor

CHUNK = 8  # the most seeds per sampler call while a setting is measured (or confirmed)
# Once the best passing setting spoils at most this many probes, no wider σ window is tried: a wider
# window can still do better on quality (DreamBooth-style digits: every step guided drew better-formed
# digits than σ ≤ 2, which spoiled 2 of 64 probes).
SPOIL_STOP = 1
# Reusing samples changes which seeds share a batch from one setting to the next, and batching rounds
# differently: two settings that move the probes alike then differ in cost by ~1e-7, not 0. Costs are
# compared at this many decimals, so such a tie still goes to the setting considered first.
COST_DECIMALS = 4


@dataclass
class Row:
    """One setting's measurements so far, by probe index (copy probes first)."""
    settings: dict[str, Any]
    order: int  # when it is considered: of two settings that cost the same, the earlier wins
    copies: dict[int, bool] = field(default_factory=dict)
    spoiled: dict[int, bool] = field(default_factory=dict)
    change: dict[int, float] = field(default_factory=dict)
    samples: dict[int, Tensor] = field(default_factory=dict)
    model_calls: int = 0
    reused: int = 0  # samples taken from a path already sampled (calibration_reuse), not sampled again
    seconds: float = 0.0
    abandoned: str = ""  # why it stopped early ("" = measured on every probe it was given)
    set_aside: bool = False  # abandoned because a passing setting cost less (resumed if that one fails)
    weak: bool = False  # set aside for spoiling over WEAK_SPOIL of the probes (Search.resolve_weak)
    confirm_copies: dict[int, bool] = field(default_factory=dict)  # on the confirmation seeds
    confirmed: bool | None = None  # None: never put to the confirmation seeds

    def n_copies(self) -> int:
        return sum(self.copies.values())

    def n_spoiled(self) -> int:
        return sum(self.spoiled.values())

    def moved(self) -> float:
        """The probes that did not copy, each counted by how far the guide moved it (relative ℓ2
        change, at most 1), leaving out those already spoiled."""
        return sum(min(1.0, c) for i, c in self.change.items() if not self.spoiled.get(i, False))

    def cost(self) -> float:
        """Spoiled probes plus the moved non-copies. A probe that still copies is the target's to bound."""
        return round(self.n_spoiled() + self.moved(), COST_DECIMALS)

    def rank(self) -> tuple[float, int]:
        """Cost first; of two that cost the same, the one considered first wins."""
        return self.cost(), self.order

    def beats(self, other: "Row") -> bool:
        """Costs only grow as probes are added, so a setting that part-measured no longer beats this one never will."""
        return self.rank() < other.rank()


class Search:
    """Tries the ladder on the probes. ``best``: the passing, confirmed setting that costs least so far;
    ``pending``: settings that passed the probes and wait for confirmation, once per window, least costly first."""

    def __init__(self, guard: Guard, probes: ProbeSampler, seeds: list[int], confirm: list[int],
                 unguarded: Tensor, ratios: Tensor, allowed: int, pooled: int) -> None:
        self.guard, self.probes, self.seeds, self.confirm = guard, probes, seeds, confirm
        self.base, self.copied = unguarded, ratios < REPLICA_L2_RATIO
        self.allowed, self.pooled = allowed, pooled
        self.reference = Reference.of(torch.cat([probes.train, unguarded]), ratios[~self.copied])
        n = len(seeds)
        # Copy seeds first: a setting that cannot remove them is abandoned after a chunk or two.
        self.order = [i for i in range(n) if self.copied[i]] + [i for i in range(n) if not self.copied[i]]
        self.rows: list[Row] = []
        self.best: Row | None = None
        self.pending: list[Row] = []
        self.weak_limit = float("inf")  # spoiled probes past which a setting is set aside as weak

    def bar(self) -> Row | None:
        """The setting to beat: the least costly of the confirmed best and the pending ones."""
        return min(([self.best] if self.best is not None else []) + self.pending, key=Row.rank, default=None)

    def measure(self, row: Row, chunk: list[int], what: str) -> tuple[Tensor, Tensor]:
        t0, c0 = time.monotonic(), self.probes.calls
        x, reused = self.probes.sample(row.settings, chunk, what)
        row.model_calls += self.probes.calls - c0
        row.reused += reused
        row.seconds += time.monotonic() - t0
        return x, self.probes.ratios(x)

    def troubled_first(self, todo: list[int]) -> list[int]:
        """The probes in the order to measure them: those the settings measured so far failed on (still a
        copy, or spoiled) most often first, so a setting that fails too is abandoned after fewer. Any
        order gives the same verdicts: copies and cost only grow as probes are added."""
        failed = {i: sum(r.copies.get(i, False) or r.spoiled.get(i, False) for r in self.rows) for i in todo}
        return sorted(todo, key=lambda i: -failed[i])  # stable: copy seeds first among equals

    def fewest_to_settle(self, row: Row, ahead: Row | None) -> int:
        """The next batch's size: the fewest probes that could end the row (each adds at most one copy,
        one spoiled probe, and 1 to its cost), at most ``CHUNK``. A larger batch would sample probes a setting
        abandoned after the first few of them never needed."""
        need = self.allowed + 1 - row.n_copies()
        if self.weak_limit < len(self.seeds):
            need = min(need, math.floor(self.weak_limit) + 1 - row.n_spoiled())
        if ahead is not None:
            need = min(need, math.ceil(ahead.cost() - row.cost()))
        return min(CHUNK, max(1, need))

    def evaluate(self, row: Row, full: bool = False) -> bool:
        """Sample the probes this row still lacks; stop once it can no longer reach the copy target or
        beat the best passing setting so far (unless ``full``). True when every probe was measured."""
        todo = self.troubled_first([i for i in self.order if i not in row.copies])
        while todo:
            if not full and row.n_copies() > self.allowed:
                row.abandoned = "too many copies"
                return False
            ahead = self.bar()
            if not full and ahead is not None and ahead.beats(row):
                row.abandoned = f"spoils or moves more than {describe(ahead.settings)}"
                row.set_aside, row.weak = True, False
                return False
            if not full and row.n_spoiled() > self.weak_limit:
                row.abandoned, row.set_aside, row.weak = "spoils over a tenth of the probes", False, True
                return False
            k = CHUNK if full else self.fewest_to_settle(row, ahead)
            idx, todo = todo[:k], todo[k:]
            x, ratio = self.measure(row, [self.seeds[i] for i in idx], describe(row.settings))
            self._record(row, idx, x, ratio)
        row.abandoned, row.set_aside, row.weak = "", False, False
        return True

    def _record(self, row: Row, idx: list[int], x: Tensor, ratio: Tensor) -> None:
        flags, bad = ratio < REPLICA_L2_RATIO, self.reference.spoiled(x, ratio)
        for q, i in enumerate(idx):
            row.copies[i] = bool(flags[q])
            row.spoiled[i] = bool(bad[q]) and not row.copies[i]
            row.samples[i] = x[q]
            if not self.copied[i]:
                base = self.base[i]
                row.change[i] = float((x[q] - base).norm() / base.norm().clamp_min(1e-12))

    def confirmed(self, row: Row) -> bool:
        """Does the row pass again with the confirmation seeds added? Stops once it cannot."""
        m = len(self.confirm)
        if m == 0:
            return True
        if row.confirmed is None:
            if any(r.confirmed is not None for r in self.rows):
                self.probes.total += m  # the first confirmation was counted in the total from the start
            row.confirmed = True
            todo = list(self.confirm)
            while todo:
                # the fewest new seeds that could fail it, as for the probes
                k = min(CHUNK, max(1, self.pooled + 1 - row.n_copies() - sum(row.confirm_copies.values())))
                chunk, todo = todo[:k], todo[k:]
                _, ratio = self.measure(row, chunk, "confirming " + describe(row.settings))
                for seed, flag in zip(chunk, (ratio < REPLICA_L2_RATIO).tolist()):
                    row.confirm_copies[seed] = bool(flag)
                if row.n_copies() + sum(row.confirm_copies.values()) > self.pooled:
                    row.confirmed = False
                    break
        return row.confirmed

    def consider(self, row: Row) -> None:
        """Keep row for confirmation if it passes on every probe and beats the best so far."""
        if (len(row.copies) == len(self.seeds) and row.n_copies() <= self.allowed
                and (self.best is None or row.beats(self.best))):
            self.pending.append(row)

    def settle(self) -> None:
        """Confirm the pending settings, least costly first, until one passes (it becomes the best) or
        none is left. When one fails, the settings set aside because it cost less are measured further:
        the choice is the one confirming each new best at once would make, with fewer confirmation runs
        (one per window where every confirmation passes)."""
        while self.pending:  # each beat the best when it was added, and the best changes only here
            first = min(self.pending, key=Row.rank)
            self.pending.remove(first)
            if self.confirmed(first):
                self.best = first
                self.pending.clear()
                return
            for row in self.rows:
                if row.set_aside and self.evaluate(row):
                    self.consider(row)

    def try_window(self, window: list[dict[str, Any]], first: int) -> None:
        """Every gate of one σ window, the strongest first: if even that cannot reach the target, the
        gentler gates will not either, and the window is skipped. The strongest is considered after the
        others (its order), so it is kept only if it costs less than every one of them."""
        strongest = Row(window[-1], order=first + len(window) - 1)
        self.rows.append(strongest)
        self.evaluate(strongest)
        if strongest.n_copies() > self.allowed:
            return
        # Every gate of a window that can pass is measured: the gentlest passing gate may leave copies
        # pushed just past the line (near copies) that a stronger one moves away.
        for i, settings in enumerate(window[:-1]):
            row = Row(settings, order=first + i)
            self.rows.append(row)
            self.evaluate(row)
            self.consider(row)
        self.consider(strongest)
        self.settle()

    def set_aside_limit(self) -> float:
        """Spoiled probes past which a setting is set aside as weak: past them it can be chosen only where
        no stronger push does better (``run``)."""
        return WEAK_SPOIL * len(self.seeds)

    def resolve_weak(self, everything: bool = False) -> None:
        """Measure on the weak settings set aside that might still beat the best (``everything``: all of
        them, where there is no best), as the ladder would have measured them: the best is then the one
        measuring every setting to the end would give."""
        if self.best is None and not everything:
            return
        rows = [r for r in self.rows if r.weak and (everything or r.beats(self.best))]
        if not rows:
            return
        limit, self.weak_limit = self.weak_limit, float("inf")
        for row in rows:
            if self.evaluate(row):
                self.consider(row)
        self.settle()
        self.weak_limit = limit

    def run(self) -> Row | None:
        """The ladder, push by push (``STRENGTHS``); None when no setting reached the target. A wider
        window is tried only while the best setting still spoils more than ``SPOIL_STOP`` probes:
        relative change compares the gates of one window better than it compares windows, so moved
        non-copies alone do not send the search wider. A stronger push is tried while nothing passed,
        or while the best, found at the push just tried, still spoils more than ``WEAK_SPOIL`` of the
        probes: with CFG 5 on the LoRA benchmark the standard push passed on Euler only by spoiling
        over a tenth of the probes with overshooting samples (guard 0: 66 %), where the doubled step cap
        passed spoiling at most a tenth (docs/design-log.md, "A stronger push for a spoiling best"). A
        push that finds nothing better ends the search. A setting that spoils more than a tenth is set
        aside once it does (weak), and measured on only where it might still beat the best, or where a
        push passed nothing else after one that did the same: the same choice, fewer calls."""
        considered, per_scale = 0, len(self.seeds) * sum(len(w) for w in ladder(self.guard))
        self.weak_limit = self.set_aside_limit()
        deferred = False  # weak settings of the push before, not measured on: it passed nothing else
        for s_i, strength in enumerate(STRENGTHS):
            if s_i:
                self.probes.total += per_scale  # the gentler push passed nothing, or only by spoiling
            first = considered
            for window in ladder(self.guard, strength):
                self.try_window(window, considered)
                considered += len(window)
                self.resolve_weak()
                if self.best is not None and self.best.n_spoiled() <= SPOIL_STOP:
                    break
            if self.best is None and any(r.weak for r in self.rows):
                if deferred or s_i + 1 == len(STRENGTHS):
                    self.resolve_weak(everything=True)  # whether this push found a better one decides
                else:
                    deferred = True  # a stronger push is tried whatever the weak ones would measure
                    continue
            deferred = False
            if self.best is not None and (self.best.order < first
                                          or self.best.n_spoiled() <= WEAK_SPOIL * len(self.seeds)):
                break
        return self.best

    def most_promising(self) -> Row:
        """Where nothing reached the target: the row with the fewest copies (then spoiled) per probe
        measured, measured on every probe."""
        chosen = min(self.rows, key=lambda r: (r.n_copies() / max(1, len(r.copies)),
                                               r.n_spoiled() / max(1, len(r.copies))))
        self.evaluate(chosen, full=True)
        return chosen


def row_dict(row: Row, chosen: bool, allowed: int, n: int) -> dict[str, Any]:
    """A setting's line of ``Calibration.rows``: what it measured and how it ended."""
    evaluated = len(row.copies)
    changes = list(row.change.values())
    confirm_copies = sum(row.confirm_copies.values())
    if chosen:
        outcome = "chosen"
    elif row.abandoned:
        outcome = "abandoned: " + row.abandoned
    elif row.n_copies() > allowed:
        outcome = "too many copies"
    elif row.confirmed is False:
        outcome = f"failed confirmation ({confirm_copies} copies on {len(row.confirm_copies)} new seeds)"
    else:
        outcome = "passed" if evaluated == n else "not finished"
    return {
        "label": describe(row.settings),
        "settings": dict(row.settings),
        "copies": row.n_copies(),
        "evaluated": evaluated,
        # over the probes measured; copy seeds come first, so a partial rate overstates the full one
        "copy_rate": row.n_copies() / max(1, evaluated),
        "complete": evaluated == n,
        "spoiled": row.n_spoiled(),
        "change_noncopy": (sum(changes) / len(changes)) if changes else None,
        "cost": round(row.cost(), 3),  # over the probes measured
        # copies on the confirmation seeds measured (None when the row was never confirmed)
        "confirm": f"{confirm_copies}/{len(row.confirm_copies)}" if row.confirm_copies else None,
        "model_calls": row.model_calls,
        "reused": row.reused,
        "seconds": round(row.seconds, 2),
        "outcome": outcome,
    }
