"""``livetranslate serve audio|translate|gateway``: run one workload as its container does.

Each workload package exposes ``create_app()`` (settings read from the environment, models loaded
once in the app's lifespan). Uvicorn runs with the sans-I/O websockets implementation where it
exists: measured here at about half the memory per idle connection of the legacy one.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os

from livetranslate.config import SERVICE_PORT
from livetranslate.logs import configure_logging

APPS = {
    "audio": "livetranslate.workloads.audio.app",
    "translate": "livetranslate.workloads.translate.app",
    "gateway": "livetranslate.workloads.gateway.app",
}


def _ws_impl() -> str:
    try:
        importlib.import_module("uvicorn.protocols.websockets.websockets_sansio_impl")
        return "websockets-sansio"
    except ImportError:
        return "websockets"


def _tune_gc() -> None:
    """The gateway allocates a few short-lived objects per audio frame, thousands of frames a
    second: collect the young generation less often, and keep what startup built (modules,
    schemas) out of every full collection. Not for in-process test servers: a frozen heap there
    would keep every earlier test's garbage."""
    gc.collect()
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, 20_000), gen1, gen2)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="livetranslate serve",
        description="Run one service of the pipeline as its container does (the operator's pods and "
        "`livetranslate up` start them this way). It reads the pipeline file named by "
        "LT_PIPELINE_CONFIG.",
    )
    parser.add_argument("workload", choices=sorted(APPS), help="which service")
    parser.add_argument(
        "--host",
        default=os.environ.get("LT_HOST", "0.0.0.0"),
        help="address to listen on (default $LT_HOST or all)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("LT_PORT", SERVICE_PORT)),
        help=f"port for HTTP, WebSocket and /metrics (default $LT_PORT or {SERVICE_PORT})",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("LT_LOG_LEVEL", "info"),
        help="debug, info, warning or error (default $LT_LOG_LEVEL or info)",
    )
    args = parser.parse_args(argv)

    import uvicorn

    configure_logging(args.log_level, component=args.workload)
    module = importlib.import_module(APPS[args.workload])
    app = module.create_app()
    if args.workload == "gateway":
        _tune_gc()
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        ws=_ws_impl(),
        ws_max_size=2 * 1024 * 1024,
        # permessage-deflate, which browsers and most clients offer, would inflate every audio
        # frame and deflate every event: CPU per frame for PCM that barely compresses.
        ws_per_message_deflate=False,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=20,
    )
    return 0
