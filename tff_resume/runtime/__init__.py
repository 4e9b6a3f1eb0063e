"""Where computations run: the local TFF worker and its execution context (`local_worker`), its
network isolation (`network_isolation`), and stop signals (`signals`)."""
