"""`maga send`: write a slide at a magnification, upload it to a `maga serve` server, report timings."""

from __future__ import annotations

import json
import os


def register(sub) -> None:
    p = sub.add_parser("send", help="send a slide to a telepathology server and print the diagnosis")
    p.add_argument("slide")
    p.add_argument("--server", required=True, help="e.g. http://127.0.0.1:8765")
    p.add_argument("--mag", type=float, default=5.0, help="magnification to send (20, 10, 5)")
    p.add_argument("--bandwidth-mbps", type=float, default=None, help="cap the upload rate (token bucket)")
    p.add_argument("--token", default=os.environ.get("MAGA_TOKEN", ""), help="bearer token (or env MAGA_TOKEN)")
    p.add_argument("--mpp", type=float, default=None, help="level-0 microns per pixel when the slide lacks it")
    p.set_defaults(func=run)


def run(args) -> int:
    # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
    from maga_core.config import to_jsonable
    from maga_core.errors import MagaError
    from maga.telepath.client import send

    if not args.token:
        raise MagaError("no bearer token: pass --token or set MAGA_TOKEN", args.server)
    report = send(args.slide, args.server, args.token, args.mag, args.bandwidth_mbps, mpp=args.mpp)
    print(json.dumps(to_jsonable(report), indent=2))
    return 0
