"""Where each role of a run goes: the resource model, a pure placement planner, Ray placement groups.

Roles: ``rollout`` (vLLM engines playing episodes), ``learner`` (DeepSpeed data-parallel ranks),
``reference`` and ``critic`` (extra models; only count 0 exists: they live inside the learner actors),
``reward`` (scoring actors), ``caption_store`` (shard-serving actors), and the *served* roles
``video_qa`` and ``captioner`` (vision-language models behind vLLM OpenAI servers,
:mod:`~longvideo_r1.cluster.served`).

Only what a run starts is reserved: :func:`plan` reserves the ``roles`` its caller starts actors
for, by default :data:`JOB_ROLES` (what the RL job starts); a served role reserves its own bundles
when a stage first needs it; :func:`plan_on_nodes` (does the whole run fit the cluster?) counts both.
``caption_store`` gets no bundles: its actors, when the RL job serves the store
(``rl.store_access``), are pinned to the nodes that hold its files instead.

The model
---------
A role asks for ``count`` replicas. A replica takes ``tensor_parallel_size`` *bundles* of
``{CPU: num_cpus, GPU: num_gpus}`` and all of them must sit on one node (NCCL tensor parallelism
across nodes is far too slow). Roles listed together in ``colocate`` share bundles: each shared
bundle is as big as the largest ask of the roles on it, and each actor asks for its share of it (in
proportion to what its role asked), so e.g. ``[["rollout", "learner"]]`` puts a vLLM engine and a
DeepSpeed rank on the same GPU (a hybrid engine: the engine sleeps while the learner trains).

Placement groups
----------------
- Roles (or colocate groups) whose replicas are single bundles get one placement group with the
  configured ``strategy`` (PACK by default); rank ``i`` of a role is bundle ``i``. This is the form
  :class:`~longvideo_r1.trainer.learner_group.LearnerGroup` takes (``placement_group``, ``bundle_offset``).
- Replicas with ``tensor_parallel_size > 1`` each get their own STRICT_PACK placement group of
  ``tensor_parallel_size`` bundles: Ray then guarantees one node per tensor-parallel group. The
  replica's actor is scheduled into bundle 0 with ``placement_group_capture_child_tasks=True`` and
  asks for no GPU itself: vLLM's Ray executor finds the captured group and starts one worker per
  bundle (each asking :attr:`Slot.worker_gpus`; with colocation set vLLM's
  ``VLLM_RAY_PER_WORKER_GPUS`` to it). This is how OpenRLHF places its vLLM engines.
- A served role's replica is one bundle of ``tensor_parallel_size`` × its ask (one node, as a
  bundle always is): its server is a subprocess of the replica's actor, not a Ray task, so the actor
  holds all of the replica's GPUs and vLLM's own tensor-parallel workers share them.

:func:`plan` is a pure function (no Ray): it checks the plan against a cluster's totals (and, given
per-node resources, packs it onto the nodes), and raises :class:`~longvideo_r1.errors.InputError`
naming the roles, what they ask, what the cluster has and what to change. :func:`create` reserves
the plan on the running Ray cluster (checking first, so it never waits forever on a request the
cluster cannot meet) and returns :class:`PlacementGroups`, which hands each actor its scheduling
strategy.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import uuid
from dataclasses import dataclass, field

from longvideo_r1.errors import InputError

log = logging.getLogger("longvideo_r1.cluster")

ROLES = ("rollout", "learner", "reference", "critic", "reward", "caption_store", "video_qa", "captioner")
JOB_ROLES = ("rollout", "learner", "reward")
"""the roles the RL job starts actors for: what :func:`plan` reserves unless told otherwise"""
SERVED_ROLES = ("video_qa", "captioner")
"""roles served by vLLM OpenAI servers (:mod:`~longvideo_r1.cluster.served`); each reserves its own
bundles when it starts"""
IN_LEARNER_ROLES = ("reference", "critic")
"""roles that live inside the learner actors (no actor of their own exists: count must be 0)"""
STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
RESOURCES = ("GPU", "CPU")
_EPS = 1e-6


@dataclass
class RoleResources:
    """What one role asks for: ``count`` replicas of ``tensor_parallel_size`` bundles each."""

    count: int
    """actors of this role (data-parallel ranks, engines, servers); 0: none of its own (a reference or
    critic model then lives inside the learner actors)"""
    num_cpus: float
    """logical CPUs per bundle (per tensor-parallel rank)"""
    num_gpus: float
    """GPUs per bundle; a fraction below 1 shares a GPU, above 1 it must be whole"""
    tensor_parallel_size: int = 1
    """bundles per replica, all on one node (vLLM's tensor-parallel workers)"""


def _role(count: int, num_cpus: float, num_gpus: float = 0.0, tensor_parallel_size: int = 1):
    return field(default_factory=lambda: RoleResources(count, num_cpus, num_gpus, tensor_parallel_size))


@dataclass
class PlacementConfig:
    """Resources and placement of every role (the defaults fit the 2-CPU demo machine: 1.85 CPUs)."""

    strategy: str = "PACK"
    """Ray strategy of the groups of single-bundle replicas: PACK, SPREAD, STRICT_PACK, STRICT_SPREAD
    (tensor-parallel replicas always get STRICT_PACK groups of their own)"""
    colocate: list[list[str]] = field(default_factory=list)
    """roles that share bundles, e.g. [[learner, reference, critic]] or [[rollout, learner]] (hybrid
    engine on GPUs); a role may appear in one group only"""
    rollout: RoleResources = _role(1, 1.0)
    """vLLM (or transformers) engines playing episodes"""
    learner: RoleResources = _role(1, 0.5)
    """DeepSpeed data-parallel ranks"""
    reference: RoleResources = _role(0, 0.0)
    """a separate reference-model actor (0: the learner holds the reference model)"""
    critic: RoleResources = _role(0, 0.0)
    """a separate critic actor (0: none, or inside the learner: GRPO needs none, PPO a value head)"""
    reward: RoleResources = _role(1, 0.1)
    """reward-service actors (light: rule-based scoring)"""
    caption_store: RoleResources = _role(1, 0.25)
    """caption-store serving actors (each owns a group of shards)"""
    video_qa: RoleResources = _role(0, 0.0)
    """replicas of the served video_qa model (served.video_qa; 0: another backend or an external endpoint);
    num_cpus / num_gpus per tensor-parallel rank"""
    captioner: RoleResources = _role(0, 0.0)
    """replicas of a served captioning model (served.captioner; 0: none)"""
    timeout_s: float = 120.0
    """seconds to wait for the placement groups to be scheduled before failing with an explanation"""

    def role(self, name: str) -> RoleResources:
        if name not in ROLES:
            raise InputError(f"placement: unknown role {name!r}; roles are {', '.join(ROLES)}")
        return getattr(self, name)


# ----------------------------------------------------------------------------------- validation


def validate(placement: PlacementConfig) -> None:
    """Raise InputError, naming the key, for any setting Ray would reject or the planner can't honour."""
    if placement.strategy not in STRATEGIES:
        raise InputError(f"placement.strategy {placement.strategy!r}: use one of {', '.join(STRATEGIES)}")
    for name in ROLES:
        r = placement.role(name)
        key = f"placement.{name}"
        if not isinstance(r.count, int) or isinstance(r.count, bool) or r.count < 0:
            raise InputError(f"{key}.count={r.count!r}: give a whole number ≥ 0")
        if not isinstance(r.tensor_parallel_size, int) or r.tensor_parallel_size < 1:
            raise InputError(f"{key}.tensor_parallel_size={r.tensor_parallel_size!r}: give a whole number ≥ 1")
        for attr in ("num_cpus", "num_gpus"):
            value = getattr(r, attr)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or math.isnan(value):
                raise InputError(f"{key}.{attr}={value!r}: give a number ≥ 0")
            if value > 1 and value != int(value):
                raise InputError(f"{key}.{attr}={value}: Ray takes fractions only below 1; give a whole "
                                 f"number or a fraction < 1")
        if r.count and r.num_cpus <= 0 and r.num_gpus <= 0:
            raise InputError(f"{key}: {r.count} actors that ask for no CPU and no GPU; give num_cpus "
                             "(e.g. 0.1) or set count to 0")
        if name in IN_LEARNER_ROLES and r.count:
            raise InputError(f"{key}.count={r.count}: the platform runs no separate {name} actors (the learner "
                             f"ranks hold the {name} model, sharded as the policy is); set {key}.count to 0")
        if name in SERVED_ROLES and r.tensor_parallel_size > 1:
            for attr in ("num_cpus", "num_gpus"):
                whole = getattr(r, attr) * r.tensor_parallel_size
                if whole > 1 and abs(whole - round(whole)) > _EPS:
                    raise InputError(f"{key}: a replica takes tensor_parallel_size × {attr} = {whole:g} in one "
                                     f"bundle, and Ray takes fractions only below 1; make it a whole number")
    if not isinstance(placement.colocate, list):
        raise InputError(f"placement.colocate={placement.colocate!r}: give a list of role lists, e.g. "
                         "[[learner, reference, critic]]")
    seen: dict[str, int] = {}
    for g, group in enumerate(placement.colocate):
        if not isinstance(group, list) or not all(isinstance(x, str) for x in group) or not group:
            raise InputError(f"placement.colocate[{g}]={group!r}: give a list of role names, e.g. [rollout, learner]")
        for name in group:
            if name not in ROLES:
                raise InputError(f"placement.colocate[{g}]: unknown role {name!r}; roles are {', '.join(ROLES)}")
            if name in seen:
                raise InputError(f"placement.colocate: {name} is in group {seen[name]} and group {g}; "
                                 "a role shares bundles with one group only (merge the groups)")
            seen[name] = g
        sizes = {placement.role(n).tensor_parallel_size for n in group if placement.role(n).count}
        tp = max(sizes, default=1)
        if not sizes <= {1, tp}:
            raise InputError(f"placement.colocate[{g}] {group}: tensor_parallel_size "
                             f"{', '.join(f'{n}={placement.role(n).tensor_parallel_size}' for n in group)}; "
                             f"colocated roles must use {tp} or 1")
        served = [n for n in group if n in SERVED_ROLES]
        if served and len(group) > 1:
            raise InputError(f"placement.colocate[{g}] {group}: {served[0]} is a served role, whose servers "
                             "reserve bundles of their own when they start; take it out of placement.colocate")


# ----------------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Slot:
    """Where one actor of a role goes, and what it asks for there."""

    group: int
    """index of its placement group in :attr:`Plan.groups`"""
    bundle: int
    """bundle index inside that placement group"""
    num_cpus: float
    """what the actor asks for (its share of the bundle)"""
    num_gpus: float
    capture_child_tasks: bool = False
    """True for the actor of a tensor-parallel replica: its engine's workers go into the same group"""
    worker_gpus: float = 0.0
    """GPU each tensor-parallel worker of the replica asks for (one per bundle); 0 for other actors"""


@dataclass
class GroupPlan:
    """One Ray placement group to create."""

    name: str
    strategy: str
    bundles: list[dict[str, float]]
    roles: tuple[str, ...]
    tensor_parallel_size: int = 1

    def total(self, resource: str) -> float:
        return sum(b.get(resource, 0.0) for b in self.bundles)


@dataclass
class Plan:
    groups: list[GroupPlan]
    slots: dict[str, list[Slot]]
    """role -> one slot per actor (per rank for single-bundle replicas, per replica otherwise)"""
    asks: dict[str, RoleResources]
    """what each role asked for (for messages)"""
    colocated: list[tuple[str, ...]]
    layout: list[list[str]] | None = None
    """per node, the bundles or tensor-parallel groups placed on it (when nodes were given)"""
    node_load: list[dict[str, float]] | None = None
    """per node, the GPUs and CPUs the plan puts on it (when nodes were given)"""

    @property
    def totals(self) -> dict[str, float]:
        return {r: round(sum(g.total(r) for g in self.groups), 4) for r in RESOURCES}

    def describe(self) -> str:
        t = self.totals
        lines = [f"placement plan: {t['CPU']:g} CPU, {t['GPU']:g} GPU in {len(self.groups)} placement group(s)"]
        for g in self.groups:
            shapes = sorted({_fmt_bundle(b) for b in g.bundles})
            lines.append(f"  {g.name}: {len(g.bundles)} bundle(s) of {' / '.join(shapes)}, {g.strategy}")
        for n, layout in enumerate(self.layout or []):
            load = _fmt_res(self.node_load[n]) if self.node_load else ""
            lines.append(f"  node {n} ({load}): {', '.join(layout) or '(empty)'}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"totals": self.totals, "groups": [dataclasses.asdict(g) for g in self.groups],
                "slots": {r: [dataclasses.asdict(s) for s in v] for r, v in self.slots.items()},
                "layout": self.layout}


def _fmt_bundle(bundle: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in bundle.items()) + "}"


def _floor4(x: float) -> float:
    """Ray counts resources in units of 1e-4; round shares down so they always fit their bundle."""
    return math.floor(x * 10_000 + 1e-6) / 10_000


def _role_groups(placement: PlacementConfig, roles: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Colocate groups first (their roles in ``roles`` with count > 0), then every other such role on its own."""
    out, taken = [], set()
    for group in placement.colocate:
        active = tuple(n for n in ROLES if n in group and n in roles and placement.role(n).count > 0)
        taken.update(group)
        if active:
            out.append(active)
    out += [(n,) for n in ROLES if n not in taken and n in roles and placement.role(n).count > 0]
    return out


def _bundle_ask(name: str, r: RoleResources) -> RoleResources:
    """What one bundle of role ``name`` holds: a served replica is one bundle of TP × the ask."""
    if name in SERVED_ROLES and r.tensor_parallel_size > 1:
        tp = r.tensor_parallel_size
        return RoleResources(r.count, round(r.num_cpus * tp, 4), round(r.num_gpus * tp, 4), 1)
    return r


def plan(placement: PlacementConfig, cluster_resources: dict | None = None,
         nodes: list[dict] | None = None, roles: tuple[str, ...] | list[str] = JOB_ROLES) -> Plan:
    """The placement groups, bundles and per-actor slots of the ``roles`` of ``placement`` that
    have actors (count > 0): by default what the RL job starts (:data:`JOB_ROLES`).

    ``cluster_resources`` (``ray.cluster_resources()`` or a dict like ``{"CPU": 16, "GPU": 8}``)
    is checked against the plan's totals; ``nodes`` (one resource dict per node) are packed too,
    so a tensor-parallel group larger than any node or a plan that fragments is caught here.
    Pure: no Ray needed.
    """
    validate(placement)
    unknown = [n for n in roles if n not in ROLES]
    if unknown:
        raise InputError(f"placement: unknown role {unknown[0]!r}; roles are {', '.join(ROLES)}")
    groups: list[GroupPlan] = []
    slots: dict[str, list[Slot]] = {n: [] for n in ROLES}
    role_groups = _role_groups(placement, tuple(roles))
    for members in role_groups:
        asks = {n: _bundle_ask(n, placement.role(n)) for n in members}
        tp = max(r.tensor_parallel_size for r in asks.values())
        extent = {n: r.count * r.tensor_parallel_size for n, r in asks.items()}
        size = max(extent.values())
        size = -(-size // tp) * tp
        # per bundle: the roles on it, its resources, and each role's share of it
        bundles, shares = [], []
        for b in range(size):
            present = [n for n in members if b < extent[n]]
            bundle, share = {}, {n: {} for n in present}
            for res, attr in (("CPU", "num_cpus"), ("GPU", "num_gpus")):
                want = {n: getattr(asks[n], attr) for n in present}
                top, total = max(want.values()), sum(want.values())
                if top > 0:
                    bundle[res] = float(top)
                for n in present:
                    share[n][res] = _floor4(top * want[n] / total) if total > 0 else 0.0
            bundles.append(bundle)
            shares.append(share)
        name = "+".join(members)
        if tp == 1:
            groups.append(GroupPlan(name, placement.strategy, bundles, members))
            for n in members:
                slots[n] = [Slot(len(groups) - 1, b, shares[b][n]["CPU"], shares[b][n]["GPU"])
                            for b in range(extent[n])]
            continue
        first = len(groups)
        for s in range(size // tp):
            groups.append(GroupPlan(f"{name}/{s}", "STRICT_PACK", bundles[s * tp:(s + 1) * tp], members, tp))
        for n, r in asks.items():
            if r.tensor_parallel_size == tp:
                slots[n] = [Slot(first + i, 0, shares[i * tp][n]["CPU"], 0.0, True, shares[i * tp][n]["GPU"])
                            for i in range(r.count)]
            else:
                slots[n] = [Slot(first + b // tp, b % tp, shares[b][n]["CPU"], shares[b][n]["GPU"])
                            for b in range(extent[n])]
    result = Plan(groups, slots, {n: placement.role(n) for n in ROLES},
                  [g for g in role_groups if len(g) > 1])
    if cluster_resources is not None:
        check_totals(result, cluster_resources)
    if nodes is not None:
        result.layout, result.node_load = _pack(result, nodes)
    return result


# ----------------------------------------------------------------------------------- checks


def _ask_text(role: str, r: RoleResources, resource: str) -> str:
    per = r.num_gpus if resource == "GPU" else r.num_cpus
    tp = f" × TP {r.tensor_parallel_size}" if r.tensor_parallel_size > 1 else ""
    return f"{role} {r.count}{tp} × {per:g} {resource}"


def _remedy(resource: str, p: Plan) -> str:
    tips = ["lower placement.<role>.count (fewer workers)"]
    if resource == "GPU" and any(r.tensor_parallel_size > 1 and r.count for r in p.asks.values()):
        tips.append("a smaller tensor_parallel_size")
    if resource == "GPU":
        tips.append("colocate roles so they share GPUs (placement.colocate: [[rollout, learner]])")
    else:
        tips.append("lower num_cpus, or colocate roles so they share CPUs (placement.colocate: [[rollout, learner]])")
    tips.append("or use a bigger cluster")
    return ", ".join(tips)


def check_totals(p: Plan, cluster_resources: dict) -> None:
    """InputError unless the cluster's total CPUs and GPUs cover the plan (GPUs first)."""
    totals = p.totals
    for res in RESOURCES:
        need, have = totals[res], float(cluster_resources.get(res, 0.0) or 0.0)
        if need <= have + _EPS:
            continue
        askers = []
        for members in dict.fromkeys(g.roles for g in p.groups):
            amount = sum(g.total(res) for g in p.groups if g.roles == members)
            if amount <= 0:
                continue
            if len(members) == 1:
                askers.append(_ask_text(members[0], p.asks[members[0]], res))
            else:
                bundles = [b for g in p.groups if g.roles == members for b in g.bundles]
                askers.append(f"{'+'.join(members)} (colocated, sharing) {len(bundles)} × "
                              f"{max(b.get(res, 0.0) for b in bundles):g} {res}")
        raise InputError(f"placement: the roles ask for {need:g} {res} in all but the cluster has {have:g}: "
                         f"{', '.join(askers)}; {_remedy(res, p)}")


def _units(p: Plan) -> list[tuple[str, dict[str, float], int, bool]]:
    """What must land on one node: a STRICT_PACK group whole, otherwise each bundle on its own."""
    units = []
    for gi, g in enumerate(p.groups):
        if g.strategy == "STRICT_PACK":
            what = (f"{g.name} (a tensor-parallel group of {g.tensor_parallel_size} bundles)"
                    if g.tensor_parallel_size > 1 else f"{g.name} (STRICT_PACK: all {len(g.bundles)} bundles)")
            units.append((what, {r: g.total(r) for r in RESOURCES}, gi, False))
        else:
            for bi, b in enumerate(g.bundles):
                units.append((f"{g.name}[{bi}]", {r: b.get(r, 0.0) for r in RESOURCES}, gi,
                              g.strategy == "STRICT_SPREAD"))
    return units


def _node_res(node: dict) -> dict[str, float]:
    return {r: float(node.get(r, 0.0) or 0.0) for r in RESOURCES}


def _fmt_res(res: dict[str, float]) -> str:
    return f"{res['GPU']:g} GPU, {res['CPU']:g} CPU"


def oversized(p: Plan, nodes: list[dict]) -> list[str]:
    """Messages for units bigger than every node (they can never be scheduled)."""
    caps = [_node_res(n) for n in nodes]
    out = []
    for what, need, _, _ in _units(p):
        if not any(all(need[r] <= c[r] + _EPS for r in RESOURCES) for c in caps):
            biggest = max(caps, key=lambda c: (c["GPU"], c["CPU"])) if caps else {"GPU": 0.0, "CPU": 0.0}
            out.append(f"{what} needs {_fmt_res(need)} on one node but the largest node has {_fmt_res(biggest)}")
    return out


def fit_nodes(p: Plan, nodes: list[dict]) -> list[list[str]]:
    """Pack the plan onto ``nodes`` (first fit, largest first); the per-node layout, or InputError.

    Tensor-parallel groups (STRICT_PACK) stay whole; STRICT_SPREAD bundles of one group take
    distinct nodes. A failure names the unit that did not fit and what each node had left.
    """
    return _pack(p, nodes)[0]


def _pack(p: Plan, nodes: list[dict]) -> tuple[list[list[str]], list[dict[str, float]]]:
    problems = oversized(p, nodes)
    if problems:
        raise InputError(f"placement: {problems[0]}; lower tensor_parallel_size, or use nodes with more "
                         "GPUs/CPUs" + (f" ({len(problems) - 1} more like it)" if len(problems) > 1 else ""))
    free = [_node_res(n) for n in nodes]
    layout: list[list[str]] = [[] for _ in nodes]
    spread_on: list[set[int]] = [set() for _ in nodes]
    for what, need, gi, spread in sorted(_units(p), key=lambda u: (-u[1]["GPU"], -u[1]["CPU"])):
        for i, f in enumerate(free):
            if all(need[r] <= f[r] + _EPS for r in RESOURCES) and not (spread and gi in spread_on[i]):
                for r in RESOURCES:
                    f[r] -= need[r]
                layout[i].append(what.split(" (")[0])
                if spread:
                    spread_on[i].add(gi)
                break
        else:
            left = "; ".join(f"node {i}: {_fmt_res(f)}" for i, f in enumerate(free))
            hint = (" (STRICT_SPREAD puts each bundle of a group on a different node)" if spread else "")
            raise InputError(f"placement: {what} needs {_fmt_res(need)} on one node, and no node has that "
                             f"left after the larger pieces{hint} (left: {left}); the totals may fit but "
                             "the pieces don't: lower counts or tensor_parallel_size, colocate roles, or "
                             "change placement.strategy")
    caps = [_node_res(n) for n in nodes]
    return layout, [{r: round(c[r] - f[r], 4) for r in RESOURCES} for c, f in zip(caps, free)]


def plan_on_nodes(placement: PlacementConfig, nodes: list[dict] | tuple[dict, ...],
                  roles: tuple[str, ...] = JOB_ROLES + SERVED_ROLES) -> Plan:
    """Plan the whole run (the job's roles and the served ones) on ``nodes`` (each ``{"CPU": n,
    "GPU": m}``): the totals and the per-node packing (each tensor-parallel group on one node);
    returns the plan with its ``layout``, or raises InputError saying what does not fit. The GPU
    recipes live in ``configs/*.yaml`` only."""
    nodes = list(nodes)
    totals = {r: sum(_node_res(n)[r] for n in nodes) for r in RESOURCES}
    return plan(placement, totals, nodes, roles)


# ----------------------------------------------------------------------------------- Ray


class PlacementGroups:
    """The placement groups of a plan on a live Ray cluster, and where each actor goes in them."""

    def __init__(self, plan: Plan, groups: list):
        self.plan = plan
        self.groups = groups

    def slot(self, role: str, index: int = 0) -> Slot:
        if role not in ROLES:
            raise InputError(f"placement: unknown role {role!r}; roles are {', '.join(ROLES)}")
        slots = self.plan.slots[role]
        if not 0 <= index < len(slots):
            raise InputError(f"placement: role {role} has {len(slots)} actor(s) in the plan; no actor {index} "
                             f"(raise placement.{role}.count)")
        return slots[index]

    def placement(self, role: str, index: int = 0) -> tuple:
        """``(placement_group, bundle_index)`` of actor ``index`` of ``role``."""
        s = self.slot(role, index)
        return self.groups[s.group], s.bundle

    def bundles(self, role: str) -> list[tuple]:
        """``(placement_group, bundle_index)`` of every actor of ``role``, in rank order."""
        return [(self.groups[s.group], s.bundle) for s in self.plan.slots[role]]

    def scheduling_strategy(self, role: str, index: int = 0):
        """The ``scheduling_strategy`` for ``.options(...)`` of actor ``index`` of ``role``."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        s = self.slot(role, index)
        return PlacementGroupSchedulingStrategy(placement_group=self.groups[s.group],
                                                placement_group_bundle_index=s.bundle,
                                                placement_group_capture_child_tasks=s.capture_child_tasks)

    def actor_options(self, role: str, index: int = 0) -> dict:
        """``num_cpus``, ``num_gpus`` and ``scheduling_strategy`` for actor ``index`` of ``role``."""
        s = self.slot(role, index)
        return {"num_cpus": s.num_cpus, "num_gpus": s.num_gpus,
                "scheduling_strategy": self.scheduling_strategy(role, index)}

    def learner_kwargs(self) -> dict:
        """Keyword arguments for ``LearnerGroup(config, **kwargs)``: workers, resources, group, offset."""
        slots = self.plan.slots["learner"]
        if not slots:
            raise InputError("placement: the plan has no learner actors (placement.learner.count is 0)")
        groups = {s.group for s in slots}
        offsets = [s.bundle for s in slots]
        if len(groups) > 1 or offsets != list(range(offsets[0], offsets[0] + len(slots))):
            raise InputError("placement: the learner ranks span several placement groups (they are colocated "
                             "with a tensor-parallel role); LearnerGroup takes one group: colocate the learner "
                             "with single-bundle roles only")
        return {"num_workers": len(slots), "num_cpus": min(s.num_cpus for s in slots),
                "num_gpus": min(s.num_gpus for s in slots), "placement_group": self.groups[slots[0].group],
                "bundle_offset": offsets[0]}

    def bundle_nodes(self) -> dict[str, list[str]]:
        """Group name -> the node id of each of its bundles (as Ray scheduled them)."""
        from ray.util import placement_group_table

        out = {}
        for g, pg in zip(self.plan.groups, self.groups):
            table = placement_group_table(pg).get("bundles_to_node_id", {})
            out[g.name] = [table.get(i, "") for i in range(len(g.bundles))]
        return out

    def remove(self) -> None:
        from ray.util import remove_placement_group

        for pg in self.groups:
            try:
                remove_placement_group(pg)
            except Exception as exc:  # already gone with its cluster
                log.debug("could not remove a placement group: %s", exc)
        self.groups = []

    def __enter__(self) -> "PlacementGroups":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _live_nodes() -> list[dict]:
    import ray

    return [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]


def create(p: Plan, timeout_s: float = 120.0, cluster_resources: dict | None = None) -> PlacementGroups:
    """Reserve ``p`` on the running Ray cluster; InputError if it can't, before or after waiting.

    Before creating anything the plan is checked against ``ray.cluster_resources()`` and the live
    nodes (a tensor-parallel group bigger than every node can never be scheduled). Then every group
    is created (tensor-parallel groups first) and awaited together for at most ``timeout_s``; on a
    timeout (resources held by other jobs, or fragmentation) every group is removed again and the
    error says which groups were left waiting and what the cluster has free.
    """
    import ray
    from ray.util.placement_group import placement_group

    if not ray.is_initialized():
        raise InputError("placement groups need Ray: call ray.init() (or run inside a Ray job)")
    check_totals(p, cluster_resources if cluster_resources is not None else ray.cluster_resources())
    nodes = _live_nodes()
    problems = oversized(p, nodes)
    if problems:
        raise InputError(f"placement: {problems[0]}; lower tensor_parallel_size, or add nodes with more GPUs/CPUs")
    try:
        fit_nodes(p, nodes)
    except InputError as exc:  # first fit is a heuristic: Ray may still find a packing
        log.warning("%s (trying anyway for %.0f s)", exc, timeout_s)
    order = sorted(range(len(p.groups)), key=lambda i: (p.groups[i].strategy != "STRICT_PACK",
                                                         -p.groups[i].total("GPU"), i))
    tag = uuid.uuid4().hex[:6]
    handles: list = [None] * len(p.groups)
    try:
        for i in order:
            g = p.groups[i]
            handles[i] = placement_group([dict(b) for b in g.bundles], strategy=g.strategy,
                                         name=f"lvr1-{g.name}-{tag}")
        refs = {handles[i].ready(): i for i in order}
        ready, waiting = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        if waiting:
            names = [p.groups[refs[r]].name for r in waiting]
            # free for us = free now + what our own already-scheduled groups hold
            held = {r: sum(p.groups[refs[ref]].total(r) for ref in ready) for r in RESOURCES}
            free = {r: round(ray.available_resources().get(r, 0.0) + held[r], 4) for r in RESOURCES}
            t = p.totals
            raise InputError(
                f"placement: {len(waiting)} of {len(refs)} placement group(s) ({', '.join(names)}) could not be "
                f"scheduled within {timeout_s:.0f} s although the cluster's totals suffice (the plan asks "
                f"{t['GPU']:g} GPU, {t['CPU']:g} CPU; free for it {free['GPU']:g} GPU, {free['CPU']:g} CPU): "
                "other jobs may hold resources, or the bundles don't fit the free space of single nodes "
                "(fragmentation); free the resources, lower counts or tensor_parallel_size, or raise "
                "placement.timeout_s")
        ray.get(ready)
    except BaseException:
        PlacementGroups(p, [h for h in handles if h is not None]).remove()
        raise
    return PlacementGroups(p, handles)
