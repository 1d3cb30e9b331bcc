"""What the engine precomputes from an app's wiring: which gathering agents close each batch."""

from __future__ import annotations

from .._graph import CompiledApp


def closers(app: CompiledApp) -> dict[tuple[str, int], tuple[str, ...]]:
    """For each ``each=True`` edge (source agent, index among its out edges): the gathering
    agents (``list[T]`` inputs) that collect the batch it opens, in name order.

    Walks the wiring counting batch levels: an ``each`` edge opens one, a gathering agent closes
    the innermost. The agents reached where this edge's level closes are its closers; each of
    them runs exactly once per batch, with the items that reached it (``[]`` if none did)."""
    limit = sum(e.each for e in app.edges) + 2
    out: dict[tuple[str, int], tuple[str, ...]] = {}
    for source, edges in app.out_edges.items():
        for ei, edge in enumerate(edges):
            if not edge.each:
                continue
            found: set[str] = set()
            seen: set[tuple[str, int]] = set()
            todo = [(edge.target, 1)]
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
            out[(source, ei)] = tuple(sorted(found))
    return out
