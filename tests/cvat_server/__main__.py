"""Run the CVAT-protocol test server: `python -m tests.cvat_server --state-dir DIR [--port 0]`.

It binds 127.0.0.1 only and prints `READY <url>` on stdout once it accepts connections.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from werkzeug.serving import make_server

from .app import CvatApp
from .store import Store


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--username", default="admin")
    parser.add_argument("--password", default="admin-password")
    parser.add_argument("--access-token", default=None)
    parser.add_argument("--org", default=None, help="also create an organization with this slug")
    parser.add_argument("--faults", default="{}", help="fault injection settings as JSON")
    args = parser.parse_args(argv)

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = CvatApp(
        Store(args.state_dir),
        username=args.username,
        password=args.password,
        access_token=args.access_token,
        org_slug=args.org,
        faults=json.loads(args.faults),
    )
    server = make_server("127.0.0.1", args.port, app, threaded=True)
    print(f"READY http://127.0.0.1:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        sys.stdout.flush()


if __name__ == "__main__":
    main()
