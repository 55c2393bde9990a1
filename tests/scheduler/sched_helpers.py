"""Builders shared by the scheduler tests."""

from __future__ import annotations

from loophub.scheduler import GIB, Node, Request, Resources


def node(name: str, cpu: float, mem_gib: float, gpu: int = 0, gpu_type: str | None = None
         ) -> Node:
    return Node(name, Resources(cpu=cpu, mem=int(mem_gib * GIB), gpu=gpu), gpu_type)


def req(rid: str, tenant: str, cpu: float = 0, mem_gib: float = 0, gpu: int = 0, count: int = 1,
        **kw) -> Request:
    return Request(rid, tenant, Resources(cpu=cpu, mem=int(mem_gib * GIB), gpu=gpu), count, **kw)


def started(decisions) -> list[str]:
    return [d.request_id for d in decisions if d.action == "start"]
