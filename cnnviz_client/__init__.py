"""The typed Python client of the cnnviz service, and the ``cnnviz`` command line.

    from cnnviz_client import Client

    with Client("http://127.0.0.1:8000") as client:
        maps = client.feature_maps("shapes", ["block1.conv"], sample="triangle")
        job = client.optimize("shapes", layer="block3.relu", channels=[0, 1, 2, 3], steps=128)
        job = client.wait(job.id, progress=True)
        client.save_result(job, "patterns.png")

One method per route of the service (:mod:`cnnviz_client.routes`). It speaks HTTP with httpx
and parses answers into the service's own contract (:mod:`schemas`, shipped with it); an
error answer raises :class:`ApiError` with the problem+json's ``code`` and ``detail``.
"""

from cnnviz_client.client import Client
from cnnviz_client.errors import ApiError, JobFailed
from cnnviz_client.waiting import JobEvent

__all__ = ["ApiError", "Client", "JobEvent", "JobFailed"]
