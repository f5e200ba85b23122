"""Kubernetes helpers for the manifest and job-template tests."""

from __future__ import annotations

from typing import Any


def tolerates(tolerations: list[dict[str, Any]], key: str, value: str, effect: str = "NoSchedule") -> bool:
    """Kubernetes' toleration matching for one ``key=value:effect`` taint."""
    for t in tolerations:
        if t.get("effect") not in (None, "", effect):
            continue
        operator = t.get("operator", "Equal")
        if not t.get("key") and operator == "Exists":
            return True
        if t.get("key") == key and (operator == "Exists" or t.get("value", "") == value):
            return True
    return False
