"""Service group rules that relate fields to each other; pure, no I/O.

``check_group`` returns every problem at once (field path + reason) so an operator fixing a YAML
file sees all of them in one round; field paths are those of the request body (``body.…``),
like pydantic's own errors.
"""

from __future__ import annotations

from dataclasses import dataclass

from roost_service.models import RedundancyModel, ServiceGroupSpec, ServiceSpec


@dataclass(frozen=True)
class Problem:
    """One reason a group is refused: the body field it is about, and why."""

    field: str
    message: str


def check_group(path_name: str, spec: ServiceGroupSpec) -> list[Problem]:
    """Everything wrong with ``spec`` beyond single fields (empty list: acceptable)."""
    problems: list[Problem] = []
    if spec.name is not None and spec.name != path_name:
        problems.append(
            Problem("body.name", f"{spec.name!r} differs from the name in the path {path_name!r}")
        )
    problems += _check_services(spec.services)
    problems += _check_redundancy(spec)
    problems += _check_preferred(spec)
    return problems


def _check_services(services: list[ServiceSpec]) -> list[Problem]:
    problems: list[Problem] = []
    first_index: dict[str, int] = {}
    for i, svc in enumerate(services):
        if svc.name in first_index:
            problems.append(
                Problem(
                    f"body.services.{i}.name",
                    f"duplicate service name {svc.name!r} (also services.{first_index[svc.name]})",
                )
            )
        else:
            first_index[svc.name] = i
    for i, svc in enumerate(services):
        seen: set[str] = set()
        for dep in svc.depends_on:
            if dep in seen:
                problems.append(
                    Problem(f"body.services.{i}.depends_on", f"{dep!r} is listed twice")
                )
            seen.add(dep)
            if dep not in first_index:
                problems.append(
                    Problem(
                        f"body.services.{i}.depends_on",
                        f"{svc.name!r} depends on unknown service {dep!r} "
                        f"(the group has: {', '.join(first_index)})",
                    )
                )
    cycle = find_cycle(services)
    if cycle:
        problems.append(
            Problem(
                f"body.services.{first_index[cycle[0]]}.depends_on",
                f"dependency cycle: {' -> '.join([*cycle, cycle[0]])}",
            )
        )
    return problems


def _graph(services: list[ServiceSpec]) -> dict[str, list[str]]:
    # Unknown dependencies are reported elsewhere; the graph keeps only known ones.
    names = {s.name for s in services}
    graph: dict[str, list[str]] = {}
    for svc in services:
        graph.setdefault(svc.name, [d for d in dict.fromkeys(svc.depends_on) if d in names])
    return graph


def find_cycle(services: list[ServiceSpec]) -> list[str] | None:
    """One dependency cycle as the services on it (``[a, b]`` for a -> b -> a), or None."""
    graph = _graph(services)
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = GREY
        stack.append(node)
        for dep in graph[node]:
            if colour[dep] == GREY:
                return stack[stack.index(dep) :]
            if colour[dep] == WHITE:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        colour[node] = BLACK
        return None

    # Groups hold at most 100 services, so recursion depth is bounded.
    for node in graph:
        if colour[node] == WHITE:
            found = visit(node)
            if found:
                return found
    return None


def start_order(services: list[ServiceSpec]) -> list[str]:
    """Services in an order where each comes after what it depends on; ties keep the declared
    order (so the result is stable). Stop in the reverse. Assumes no cycle."""
    graph = _graph(services)
    order: list[str] = []
    placed: set[str] = set()

    def place(node: str) -> None:
        if node in placed:
            return
        placed.add(node)
        for dep in graph[node]:
            place(dep)
        order.append(node)

    for svc in services:
        place(svc.name)
    return order


def _check_redundancy(spec: ServiceGroupSpec) -> list[Problem]:
    red, hosts = spec.redundancy, spec.members.hosts
    problems: list[Problem] = []
    if red.model is RedundancyModel.n_plus_m:
        if red.active is None:
            problems.append(Problem("body.redundancy.active", "n-plus-m needs 'active' (N >= 1)"))
        if red.standby is None:
            problems.append(Problem("body.redundancy.standby", "n-plus-m needs 'standby' (M >= 0)"))
        if problems:
            return problems
        wanted = active_count(spec) + standby_count(spec)
        if hosts is not None and wanted > len(hosts):
            problems.append(
                Problem(
                    "body.redundancy",
                    f"n-plus-m with {red.active} active + {red.standby} standby needs {wanted} "
                    f"member hosts; members.hosts lists {len(hosts)}",
                )
            )
        return problems
    # active-standby and n fix their counts themselves.
    for field in ("active", "standby"):
        if getattr(red, field) is not None:
            problems.append(
                Problem(
                    f"body.redundancy.{field}",
                    f"only n-plus-m takes '{field}' ({red.model.value} fixes its counts)",
                )
            )
    if red.model is RedundancyModel.active_standby and hosts is not None and len(hosts) < 2:
        problems.append(
            Problem(
                "body.members.hosts",
                f"active-standby needs 2 member hosts (one active, one standby); "
                f"{len(hosts)} listed",
            )
        )
    return problems


def _check_preferred(spec: ServiceGroupSpec) -> list[Problem]:
    problems: list[Problem] = []
    seen: set[str] = set()
    hosts = spec.members.hosts
    for i, host in enumerate(spec.preferred):
        if host in seen:
            problems.append(Problem(f"body.preferred.{i}", f"{host!r} is listed twice"))
        seen.add(host)
        if hosts is not None and host not in hosts:
            problems.append(Problem(f"body.preferred.{i}", f"{host!r} is not one of members.hosts"))
    return problems


def active_count(spec: ServiceGroupSpec) -> int | None:
    """How many instances are active; None for ``n`` (as many as members)."""
    red = spec.redundancy
    if red.model is RedundancyModel.active_standby:
        return 1
    if red.model is RedundancyModel.n_plus_m:
        return red.active or 0
    return None


def standby_count(spec: ServiceGroupSpec) -> int:
    red = spec.redundancy
    if red.model is RedundancyModel.active_standby:
        return 1
    if red.model is RedundancyModel.n_plus_m:
        return red.standby or 0
    return 0


def slots(spec: ServiceGroupSpec) -> list[str]:
    """The group's activity slots, one lease each: ``active`` for active-standby,
    ``active-0`` … ``active-<N-1>`` for n-plus-m; none for ``n`` (every member is active, so
    there is no activity to arbitrate)."""
    red = spec.redundancy
    if red.model is RedundancyModel.active_standby:
        return ["active"]
    if red.model is RedundancyModel.n_plus_m:
        return [f"active-{i}" for i in range(red.active or 0)]
    return []


def spec_document(spec: ServiceGroupSpec, name: str) -> dict:
    """The stored form of a valid spec (JSON types; the name from the path)."""
    doc = spec.model_dump(mode="json")
    doc["name"] = name
    return doc
