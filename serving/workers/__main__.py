"""`python -m serving.workers KIND --port P [--host H] --spec JSON`: run one media worker."""

from __future__ import annotations

import argparse
import importlib
import logging

from serving.workers.app import serve
from serving.workers.spec import MediaWorkerSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=["images", "videos", "speech", "transcription"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (0.0.0.0 in a pod; loopback beside the router)")
    parser.add_argument("--spec", required=True, help="MediaWorkerSpec as JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    spec = MediaWorkerSpec.model_validate_json(args.spec)
    module = importlib.import_module(f"serving.workers.{args.kind}.server")
    serve(module.create_app(spec), args.port, args.host)


if __name__ == "__main__":
    main()
