"""What the engine precomputes from an app's wiring: which gathering agents close each batch."""

from __future__ import annotations

from .._graph import CompiledApp


def closers(app: CompiledApp) -> dict[str, tuple[str, ...]]:
    """For each agent with ``each=True`` edges: the gathering agents (``list[T]`` inputs) that
    collect the batch its list output opens, in name order.

    One list output is one batch, however many ``each`` edges carry it. Walks the wiring
    counting batch levels: an ``each`` edge opens one, a gathering agent closes the innermost.
    The agents reached where the batch's level closes are its closers; each of them runs exactly
    once per batch, with the items that reached it (``[]`` if none did)."""
    limit = sum(e.each for e in app.edges) + 2
    out: dict[str, tuple[str, ...]] = {}
    for source, edges in app.out_edges.items():
        if not any(e.each for e in edges):
            continue
        found: set[str] = set()
        seen: set[tuple[str, int]] = set()
        todo = [(e.target, 1) for e in edges if e.each]
        while todo:
            agent, depth = todo.pop()
            if (agent, depth) in seen or depth > limit:
                continue
            seen.add((agent, depth))
            if app.specs[agent].kind == "gather":
                if depth == 1:
                    found.add(agent)
                    continue
                depth -= 1
            for nxt in app.out_edges[agent]:
                todo.append((nxt.target, depth + (1 if nxt.each else 0)))
        out[source] = tuple(sorted(found))
    return out
