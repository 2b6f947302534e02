"""A two-node Ray cluster on this machine, bound to 127.0.0.1 only, shared by the Ray tests.

Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` when it is imported: with it set to 0 every
node's services listen on the node address given (127.0.0.1); without it Ray picks the
machine's network address. ``make test`` runs with ``--dist loadscope``: a test
module's tests stay on one pytest-xdist worker, so each worker that runs Ray tests starts one
cluster for them. (``xdist_group`` marks, ``--dist loadgroup``, do nothing with pytest 9:
pytest-xdist 3.8 renames ``item._nodeid``, which pytest 9 no longer reads.)
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread():
    """One torch thread in the driver, as each one-CPU Ray worker has: the same arithmetic."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ray_cluster():
    """``ray.cluster_utils.Cluster``: a head and one more node, one CPU each; the test process is
    its driver. Yields the cluster's address (127.0.0.1:PORT)."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        assert cluster.address.split(":")[0] == "127.0.0.1", cluster.address
        ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
        nodes = [n for n in ray.nodes() if n["Alive"]]
        assert len(nodes) == 2 and {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}
        yield cluster.address
    finally:
        ray.shutdown()
        cluster.shutdown()
