"""The result table of the benchmarks that compare roost on an engine with the engine's own SDK.

Each script subclasses :class:`Row` to set how its figures and verdicts read (``MET``, ``MS_DIGITS``,
``MICRO_BELOW``) and names its two columns when it prints the table.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar


@dataclass
class Row:
    id: str
    metric: str
    unit: str
    measured: float | None  # roost on the engine (None when only the native side ran)
    native: float | None = None  # the same work on the engine's raw SDK
    target: float | None = None  # as a ratio roost/native: ≤ target (or ≥ target if higher is better)
    higher_is_better: bool = False
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    MET: ClassVar[str] = "pass"  # the verdict of a row that meets its target
    MS_DIGITS: ClassVar[int] = 2  # decimals of a figure under 1 ms
    MICRO_BELOW: ClassVar[float] = 0.0  # a figure under this many ms is shown in µs

    @property
    def ratio(self) -> float | None:
        return self.measured / self.native if self.native and self.measured is not None else None

    @property
    def verdict(self) -> str:
        if self.target is None or self.ratio is None:
            return "info"
        ok = self.ratio >= self.target if self.higher_is_better else self.ratio <= self.target
        return self.MET if ok else "MISS"

    def fmt(self, v: float | None) -> str:
        return fmt(v, self.unit, self.MS_DIGITS, self.MICRO_BELOW)

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "verdict": self.verdict}


def fmt(v: float | None, unit: str, ms_digits: int = 2, micro_below: float = 0.0) -> str:
    if v is None:
        return "-"
    if unit == "ms":
        if abs(v) < micro_below:
            return f"{v * 1000:.1f} µs"
        return f"{v:.{ms_digits}f} ms" if abs(v) < 1 else f"{v:.1f} ms"
    if unit == "runs/s":
        return f"{v:,.1f} runs/s"
    if unit == "/run":
        return f"{v:g}" if v == int(v) else f"{v:.1f}"
    return f"{v:g} {unit}"


def target_text(r: Row) -> str:
    if r.target is None:
        return "-"
    return ("≥ " if r.higher_is_better else "≤ ") + f"{r.target:.2f}× native"


def table(rows: list[Row], roost: str, native: str) -> str:
    """The markdown table; ``roost`` and ``native`` head the two columns of figures."""
    out = [f"| measurement | {roost} | {native} | ratio | target | result |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}×"
        out.append(f"| {r.metric} | {r.fmt(r.measured)} | {r.fmt(r.native)} | {ratio} | "
                   f"{target_text(r)} | {r.verdict} |")
    return "\n".join(out)


def print_results(rows: list[Row], details: dict[str, Any], roost: str, native: str) -> None:
    """The table, the rows' notes, and the client-side phases if the latency measurement ran."""
    print(table(rows, roost, native))
    notes = [f"- {r.metric.strip()}: {r.note}" for r in rows if r.note]
    if notes:
        print("\n" + "\n".join(notes))
    if "latency_phases_p50_ms" in details:
        print("\nclient-side phases, p50 (ms): " + json.dumps(
            {s: {k: round(v, 1) for k, v in d.items()} for s, d in details["latency_phases_p50_ms"].items()}))


def phases(t0: float, t_sub: float, t_wait: float, t_res: float, t_end: float) -> dict[str, float]:
    """Client-side phases of one run (ms): the start call, until the client knows the run waits for
    the approval, the approve call, until the result is in hand."""
    return {"submit": (t_sub - t0) * 1e3, "to_waiting_seen": (t_wait - t_sub) * 1e3,
            "approve": (t_res - t_wait) * 1e3, "to_result": (t_end - t_res) * 1e3}
