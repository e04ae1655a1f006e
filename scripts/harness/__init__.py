"""What the end-to-end tests and the benchmark scripts share, in one place and one import style
(`from scripts.harness.cluster import RayHead`): a throwaway Ray cluster and its teardown (`cluster`,
`processes`), reading Ray's metrics endpoint (`metrics`), and an OTLP span receiver (`spans`).
Scripts are run as modules from the project root: `.venv/bin/python -m scripts.bench_serving`."""
