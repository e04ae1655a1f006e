"""The harness's HAProxy settings name what Ray Serve reads, and keep its files inside the cluster's temp dir."""

import tempfile

from ray.serve._private import constants

from scripts.harness.cluster import haproxy_files

NODE_ID = "f" * 56  # Ray's node ids are 28 bytes in hex; HAProxy's files go in a directory named after it


def test_every_haproxy_path_is_a_setting_ray_serve_reads_and_lies_in_the_temp_dir():
    with tempfile.TemporaryDirectory(prefix="rt-", dir="/tmp") as temp_dir:  # as RayHead.start names it
        files = haproxy_files(temp_dir)
    for name, path in files.items():
        assert hasattr(constants, name), name
        assert path.startswith(f"{temp_dir}/"), (name, path)
    # Serve puts each socket in a directory per node; a Unix socket path has at most 107 bytes.
    socket = files["RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH"].replace("/metrics.sock", f"/{NODE_ID}/metrics.sock")
    assert len(socket.encode()) < 108
