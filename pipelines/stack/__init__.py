"""The embedded stack (`segloop up`): real SeaweedFS and MLflow servers on 127.0.0.1, no cluster.

processes: ports, waits, start and stop by recorded identity; servers: the two launchers;
embedded: the stack `up`/`status`/`down` manage and the `.segloop/stack.env` it writes.
"""
