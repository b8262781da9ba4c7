"""Whether the artifact store answers, as /ready, /metrics and the log tell an operator.

The state is what the last operation found (an upload, a delete, a download): no probe of its
own, so a store nobody uses costs nothing. An outage is logged once, when it starts, with what
to do; its end once too. Meanwhile every failure is counted, and finished renders waiting for
the store are a gauge, so an alert can fire on either.
"""

from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge

log = logging.getLogger("serving.video_jobs")


class ArtifactHealth:
    def __init__(self, location: str, registry: CollectorRegistry):
        self.location = location
        self.failing_since: float | None = None
        self.last_error: str | None = None
        self.failures = Counter(
            "serving_artifact_store_failures", "Operations on the video artifact store that "
            "failed (it was unreachable or refused them), by operation.", ["operation"],
            registry=registry)
        self.waiting = Gauge(
            "serving_video_uploads_waiting", "Finished renders kept on local disk because the "
            "artifact store did not take them yet; retried until it does.", registry=registry)
        self._waiting = 0

    def failed(self, operation: str, error: Exception | str) -> None:
        self.failures.labels(operation).inc()
        self.last_error = f"{operation}: {error}"
        if self.failing_since is None:
            self.failing_since = time.time()
            log.error(
                "the video artifact store %s failed (%s). Finished renders are kept on local "
                "disk and uploaded when it answers again; nothing is lost, but videos cannot be "
                "downloaded meanwhile. Check that the store is up and reachable from this "
                "router, and its bucket and credentials (router.artifacts, "
                "router.artifacts_endpoint, AWS_* variables).", self.location, self.last_error)

    def succeeded(self) -> None:
        if self.failing_since is not None:
            log.warning("the video artifact store %s answers again after %.0f s",
                        self.location, time.time() - self.failing_since)
            self.failing_since = None
            self.last_error = None

    def upload_waiting(self, delta: int) -> None:
        self._waiting += delta
        self.waiting.set(self._waiting)

    def report(self) -> dict[str, object]:
        """For /ready."""
        state: dict[str, object] = {
            "status": "up" if self.failing_since is None else "unreachable",
            "uploads_waiting": self._waiting}
        if self.failing_since is not None:
            state["since"] = int(self.failing_since)
            state["error"] = self.last_error
        return state
