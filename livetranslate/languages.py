"""``livetranslate languages``: which language pairs translate offline, and how.

What the offline (Apertium) backend serves is the same answer the spec check gives: the pairs of
``capabilities.APERTIUM_PACKAGES`` (what the translation image installs, the operator's view), or
with ``--installed`` the modes on this machine (what ``livetranslate up`` runs). A pair is direct
(one mode) or chained through one pivot language, which its translations say with
``quality: "pivot:<lang>"``. The LLM backends (``vllm``, ``openai``) are prompted with language
names and take any pair of known languages; how well a given model translates one is measured per
model, not promised here.
"""

from __future__ import annotations

import argparse
import json
import sys

from livetranslate.capabilities import (
    APERTIUM_PACKAGES,
    DEFAULT_MODES_DIR,
    LANGUAGE_NAMES,
    ApertiumPairs,
    Route,
    installed_modes,
    language_name,
    packaged_pairs,
    primary,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="livetranslate languages",
        description="List the language pairs the offline (Apertium) backend translates: direct, or "
        "through one pivot language.",
    )
    p.add_argument(
        "--installed",
        action="store_true",
        help=f"the Apertium modes installed on this machine ({DEFAULT_MODES_DIR}), which "
        "`livetranslate up` uses, instead of those the translation image ships",
    )
    p.add_argument("--from", dest="source", metavar="LANG", help="only pairs from this language (BCP-47)")
    p.add_argument("--to", dest="target", metavar="LANG", help="only pairs into this language")
    p.add_argument(
        "--json", action="store_true", help="one JSON document: every route with its modes and packages"
    )
    return p


def _routes(pairs: ApertiumPairs, source: str | None, target: str | None) -> list[Route]:
    if source and target:
        route = pairs.route(source, target)
        return [route] if route is not None else []
    wanted = None if target is None else target.lower()
    return [
        r
        for r in pairs.routes(source)
        if wanted is None or r.target.lower() == wanted or ("-" not in wanted and primary(r.target) == wanted)
    ]


def _text(routes: list[Route], where: str) -> str:
    by_source: dict[str, list[Route]] = {}
    for r in routes:
        by_source.setdefault(r.source, []).append(r)
    lines = [
        f"Offline translation pairs ({where}): {len(routes)} routes from {len(by_source)} source languages.",
        "Direct pairs first; 'through X' chains two pairs through X (quality pivot:X).",
        "",
    ]
    width = max((len(s) for s in by_source), default=2)
    for source, rs in by_source.items():
        direct = [r.target for r in rs if r.via is None]
        pivots: dict[str, list[str]] = {}
        for r in rs:
            if r.via is not None:
                pivots.setdefault(r.via, []).append(r.target)
        parts = [" ".join(direct)] if direct else []
        parts += [f"through {via}: {' '.join(ts)}" for via, ts in pivots.items()]
        name = language_name(source) or source
        lines.append(f"{source.ljust(width)}  ({name}) -> {'; '.join(parts)}")
    llm = (
        f"The vllm and openai backends take any pair of the {len(LANGUAGE_NAMES)} languages they "
        "know by name (livetranslate/capabilities.py)."
    )
    lines += ["", llm]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    for flag, code in (("--from", args.source), ("--to", args.target)):
        if (
            code is not None
            and language_name(code) is None
            and primary(code) not in {primary(s) for s in packaged_pairs().edges}
        ):
            print(
                f"livetranslate languages: {flag} {code!r} is not a language code this project knows "
                "(BCP-47, e.g. en, es, pt-BR)",
                file=sys.stderr,
            )
            return 2
    if args.installed:
        modes = installed_modes()
        if not modes:
            print(
                f"livetranslate languages: no Apertium modes under {DEFAULT_MODES_DIR}; install the "
                "packages (scripts/bootstrap.sh) or drop --installed for what the image ships",
                file=sys.stderr,
            )
            return 1
        pairs, where = ApertiumPairs(modes), f"installed here, {len(modes)} modes"
    else:
        pairs, where = packaged_pairs(), f"the translation image, {len(APERTIUM_PACKAGES)} Debian packages"
    routes = _routes(pairs, args.source, args.target)
    if args.json:
        json.dump(
            {
                "backend": "apertium",
                "source": "installed" if args.installed else "image",
                "routes": [r.as_dict() for r in routes],
            },
            sys.stdout,
            indent=1,
        )
        print()
    else:
        print(_text(routes, where))
    return 0 if routes else 1
