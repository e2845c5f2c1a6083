"""Findings that fail loudly: each sentence the prose states as a result is checked where it is made.

A solution notebook that writes "a random vector of the same norm does nothing" follows the cell
that measures it with::

    claim("a random vector of the same norm does nothing",
          holds=random_acc <= zero_acc + 0.05, evidence=f"random {random_acc:.0%}, zero-shot {zero_acc:.0%}")

which prints one line, ``[claim holds] ...`` or ``[claim FAILS] ...``, with the evidence. On the
embedded model every claim must hold: the notebook-execution tests fail on any ``[claim FAILS]``
line, so a library upgrade that changes a result cannot leave the prose silently wrong. On another
model a learner sees which claims hold there, and nothing raises.

During an nbgrader autograde run (``NBGRADER_EXECUTION`` set) the exploration cells work on reduced
data, so claims are printed as ``[claim not assessed]`` instead of judged.
"""

from __future__ import annotations

from dataclasses import dataclass

from fv_exercises.grading import grading_run

HOLDS, FAILS, SKIPPED = "[claim holds]", "[claim FAILS]", "[claim not assessed]"


@dataclass(frozen=True)
class Claim:
    statement: str
    holds: bool
    evidence: str


RECORD: list[Claim] = []  # every claim made in this process, in order


def claim(statement: str, holds: bool, evidence: str = "") -> bool:
    """Print whether ``statement`` holds on this model, with ``evidence``; return ``holds``."""
    holds = bool(holds)
    RECORD.append(Claim(statement, holds, evidence))
    suffix = f"  ({evidence})" if evidence else ""
    if grading_run():
        print(f"{SKIPPED} {statement}{suffix}  [reduced data while grading]")
    else:
        print(f"{HOLDS if holds else FAILS} {statement}{suffix}")
    return holds
