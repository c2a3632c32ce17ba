"""``livetranslate operator``: run the operator against the current kubeconfig (or in-cluster).

``HANDLER_MODULES`` lists the modules whose import registers Kopf handlers; the autoscaler adds
its timer module there. ``run()`` is the in-process entry point that tests and the benchmark use
with their own stop/ready flags.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import random
import signal
from typing import Any

import kopf

from livetranslate.logs import configure_logging
from livetranslate.operator.settings import OperatorSettings

log = logging.getLogger(__name__)

HANDLER_MODULES: list[str] = [
    "livetranslate.operator.handlers",
    "livetranslate.operator.scaling.timer",
]


def register_handlers(modules: list[str] | None = None) -> None:
    """Import every handler module (Kopf registers handlers on import)."""
    for module in modules or HANDLER_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            # A listed module that is not installed (a partial checkout) must not stop the core
            # operator: log loudly and run without it.
            if e.name != module:
                raise
            log.error("handler module %s is not installed; running without it", module)


def kopf_settings(op: OperatorSettings | None = None) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # Namespaces and CRDs are not scanned: the namespaces to serve are given, and the CRD is
    # installed by the chart before the operator starts.
    settings.scanning.disabled = True
    if op is not None:
        # Bounded retries of Kopf's own requests (no error storm: each waits longer).
        settings.networking.error_backoffs = tuple(op.api_error_backoffs)
        settings.watching.reconnect_backoff = op.watch_reconnect_seconds
    if op is not None and op.peering:
        # One active replica: the others pause while a peer of higher priority is alive. Kopf
        # pauses *every* replica of equal priority, so each process draws its own.
        settings.peering.name = op.peering
        settings.peering.clusterwide = not op.namespaces
        settings.peering.mandatory = True
        settings.peering.standalone = False
        settings.peering.lifetime = op.peering_lifetime
        settings.peering.priority = random.randint(1, 2**31 - 1)
    return settings


async def run(
    *,
    settings: OperatorSettings | None = None,
    stop_flag: Any = None,
    ready_flag: Any = None,
    memo: kopf.Memo | None = None,
    liveness_endpoint: str | None = None,
) -> None:
    """Run the operator until ``stop_flag`` is set (an asyncio.Event or Future)."""
    register_handlers()
    settings = settings or OperatorSettings()
    memo = memo if memo is not None else kopf.Memo()
    memo.settings = settings
    await kopf.operator(
        standalone=not settings.peering,
        peering_name=settings.peering or None,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        settings=kopf_settings(settings),
        memo=memo,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
        liveness_endpoint=liveness_endpoint,
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="livetranslate operator",
        description="Run the LiveTranslate operator: it turns each TranslationPipeline into its "
        "Deployments, Services and config, places them on NPU, GPU or CPU nodes, and "
        "scales them. Uses the current kubeconfig, or the pod's service account in a cluster.",
    )
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=None,
        help="namespace to serve (repeatable); default: LT_OPERATOR_NAMESPACES or all",
    )
    parser.add_argument("--metrics-port", type=int, default=None, help="port of /metrics (0 = off)")
    parser.add_argument("--log-level", default=None, help="debug, info, warning or error (default info)")
    args = parser.parse_args(argv)
    configure_logging(args.log_level, component="operator")
    overrides: dict[str, Any] = {}
    if args.namespace:
        overrides["namespaces"] = args.namespace
    if args.metrics_port is not None:
        overrides["metrics_port"] = args.metrics_port
    settings = OperatorSettings(**overrides)

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run(settings=settings, stop_flag=stop, liveness_endpoint=settings.liveness_endpoint or None)

    asyncio.run(_main())
    return 0
