"""Reading the warm engine actors from a test: the adapter-side request counter."""

from __future__ import annotations


def engine_requests_served() -> int:
    """Requests answered by every warm engine actor (counted at the adapter, inside the actor)."""
    import ray

    from nightshift.engine.runner import NAMESPACE

    total = 0
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["namespace"] == NAMESPACE and entry["name"].startswith("engine-"):
            total += ray.get(ray.get_actor(entry["name"], namespace=NAMESPACE).info.remote())["requests_served"]
    return total
