"""The demo's table and goal, in words a newcomer can read without the docs."""
from __future__ import annotations

from dataclasses import dataclass

CUT = 10.0            # copies must fall to at most a tenth of the unguarded rate (README, "The goal")
QUALITY_POINTS = 5.0  # well-formed share at most this many points under the ideal filter's: with 256
                      # fresh samples a share's standard error is about 2 points, so a tighter bar
                      # would fail on sampling noise alone

LEGEND = ("copies: samples that are near-copies of a fine-tune image (Replication Check's rule: nearest "
          "training image under 1/3 of the distance to the next ones). well-formed: samples a digit "
          "classifier reads with at least 90 % confidence. ideal filter: the unguarded samples with every "
          "copy thrown away, the best any protection could keep.")


@dataclass(frozen=True)
class Row:
    name: str
    n: int          # samples
    copies: int
    well_formed: int

    @property
    def copy_rate(self) -> float:
        return self.copies / self.n if self.n else 0.0

    @property
    def quality(self) -> float:
        return self.well_formed / self.n if self.n else 0.0


@dataclass(frozen=True)
class Goal:
    cut: float          # unguarded copy rate over the calibrated one (inf when no copy is left)
    copies_ok: bool
    quality_gap: float  # points the calibrated well-formed share lies under the ideal filter's
    quality_ok: bool

    @property
    def met(self) -> bool:
        return self.copies_ok and self.quality_ok


def goal(unguarded: Row, calibrated: Row, ideal: Row) -> Goal:
    cut = unguarded.copy_rate / calibrated.copy_rate if calibrated.copies else float("inf")
    gap = 100.0 * (ideal.quality - calibrated.quality)
    # counts, not floats: 26 copies of 256 against 260 of 256 × 10 compares exactly
    copies_ok = unguarded.copies > 0 and calibrated.copies * CUT * unguarded.n <= unguarded.copies * calibrated.n
    return Goal(cut, copies_ok, gap, round(gap, 6) <= QUALITY_POINTS)


def _pct(k: int, n: int) -> str:
    return f"{100.0 * k / n:5.1f} % ({k}/{n})" if n else "    -"


def table(rows: list[Row]) -> str:
    head = f"{'setting':<44}{'copies':>18}{'well-formed digits':>22}"
    lines = [head, "-" * len(head)]
    lines += [f"{r.name:<44}{_pct(r.copies, r.n):>18}{_pct(r.well_formed, r.n):>22}" for r in rows]
    return "\n".join(lines)


def goal_text(g: Goal, unguarded: Row, calibrated: Row, ideal: Row) -> str:
    if not unguarded.copies:
        return "Goal: not measurable: the fine-tune made no copies among these samples, so there was nothing to cut."
    cut = "every copy removed" if g.cut == float("inf") else f"cut {g.cut:.1f}x"
    return (f"Goal: copies cut at least {CUT:g}x (to at most {100 * unguarded.copy_rate / CUT:.1f} %) with "
            f"well-formed digits at most {QUALITY_POINTS:g} points under the ideal filter's.\n"
            f"Result: {'MET' if g.met else 'NOT MET'}: copies {100 * unguarded.copy_rate:.1f} % -> "
            f"{100 * calibrated.copy_rate:.1f} % ({cut}{'' if g.copies_ok else ', short of 10x'}); "
            f"well-formed {100 * calibrated.quality:.1f} % against the ideal filter's {100 * ideal.quality:.1f} % "
            f"({abs(g.quality_gap):.1f} points {'under' if g.quality_gap > 0 else 'over'} it"
            f"{'' if g.quality_ok else ', too far under'}).")
