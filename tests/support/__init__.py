"""What the tests (and the benchmarks in scripts/) stand on: the stack and router started as
processes (`harness`), real PostgreSQL, Redis and S3 servers on loopback (`local_servers`),
real HTTP peers served from a thread (`loopback`, `images`), and one way to wait for a
condition (`wait`)."""
