"""What an idempotent apply writes, as pure functions: the owner reference, the merge patch
without the fields another writer owns, the keys a desired map no longer has, and whether what
exists already contains what is wanted (then nothing is written)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def with_owner(manifest: Mapping[str, Any], owner: Mapping[str, Any] | None) -> dict[str, Any]:
    desired = {**manifest, "metadata": dict(manifest["metadata"])}
    if owner is not None:
        desired["metadata"]["ownerReferences"] = [owner_reference(owner)]
    return desired


def merged_owners(existing: list[dict[str, Any]], ours: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep other owners' references, replace ours (same uid) -- adoption without theft."""
    uids = {o.get("uid") for o in ours}
    return [o for o in existing if o.get("uid") not in uids] + ours


# Maps a child's manifest owns whole: a merge patch only adds and overwrites keys, so a key added
# by hand (a Service selector or a NetworkPolicy podSelector narrowed to nothing, leaving the pods
# unreachable or unprotected) would survive every reconcile. The API server defaults nothing
# inside these, so the keys the manifest lacks are removed (null in the merge patch).
OWNED_MAPS: tuple[tuple[str, ...], ...] = (
    ("spec", "selector"),
    ("spec", "selector", "matchLabels"),
    ("spec", "podSelector"),
    ("spec", "podSelector", "matchLabels"),
)


def drop_extra_keys(
    patch: dict[str, Any], existing: Mapping[str, Any], paths: Sequence[tuple[str, ...]]
) -> None:
    """Set to None, in ``patch``, each key of an owned map that ``existing`` has and ``patch`` lacks."""
    for path in paths:
        have: Any = existing
        want: Any = patch
        for key in path:
            have = have.get(key) if isinstance(have, Mapping) else None
            want = want.get(key) if isinstance(want, Mapping) else None
        if not isinstance(have, Mapping) or not isinstance(want, dict):
            continue
        extra = [k for k in have if k not in want]
        if not extra:
            continue
        node = patch  # copy along the path: the caller's manifest is shared
        for key in path:
            node[key] = dict(node[key])
            node = node[key]
        node.update(dict.fromkeys(extra))


def without(manifest: Mapping[str, Any], paths: Sequence[tuple[str, ...]]) -> dict[str, Any]:
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in manifest.items()}
    for path in paths:
        node: Any = out
        for key in path[:-1]:
            if not isinstance(node, dict) or key not in node:
                node = None
                break
            node[key] = dict(node[key])
            node = node[key]
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return out


def contains(existing: Any, wanted: Any) -> bool:
    """Whether merge-patching ``wanted`` onto ``existing`` would change nothing."""
    if isinstance(wanted, dict):
        if not isinstance(existing, dict):
            return False
        return all(
            contains(existing.get(k), v) if v is not None else k not in existing for k, v in wanted.items()
        )
    return bool(existing == wanted)
