"""The router: the HTTP contract in front of the workers.

What the launcher uses of it is exported here; everything else is the router's own.
"""

from serving.router.admin import metrics_only_app
from serving.router.app import build_app, create_app
from serving.router.keys import Principal, UnresolvedKey, resolve_keys
from serving.router.metrics import SHARED_METRICS_ENV, share_metrics
from serving.router.services import Services, build_services

__all__ = [
    "SHARED_METRICS_ENV",
    "Principal",
    "Services",
    "UnresolvedKey",
    "build_app",
    "build_services",
    "create_app",
    "metrics_only_app",
    "resolve_keys",
    "share_metrics",
]
