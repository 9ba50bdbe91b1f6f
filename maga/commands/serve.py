"""`maga serve`: the telepathology inference service (binds loopback unless told otherwise)."""

from __future__ import annotations

from maga_core.device import add_arguments as add_device_arguments


def register(sub) -> None:
    p = sub.add_parser("serve", help="run the upload-and-diagnose HTTP service")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--token", default="", help="bearer token clients must send (generated and printed once if empty)")
    p.add_argument("--max-upload-mb", type=float, default=2048)
    p.add_argument("--body-timeout", type=float, default=60.0,
                   help="seconds an upload may stall between two chunks before it is dropped with 408")
    p.add_argument("--model", required=True, help="a service model folder (maga.telepath.pipeline.save_service_model)")
    add_device_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import uvicorn

    # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
    from maga_core.device import resolve
    from maga.telepath.pipeline import SlideAnalyzer
    from maga.telepath.server import ServeConfig, create_app

    analyzer = SlideAnalyzer.load(args.model, runtime=resolve(args.device, args.precision))
    config = ServeConfig(token=args.token, max_upload_bytes=int(args.max_upload_mb * 1024**2),
                         body_timeout_s=args.body_timeout)
    app = create_app(analyzer, config)
    if not args.token:
        print(f"bearer token (shown once): {config.token}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
