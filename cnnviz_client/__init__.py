"""The typed Python client of the cnnviz service, and the ``cnnviz`` command line.

    from cnnviz_client import Client

    with Client("http://127.0.0.1:8000") as client:
        maps = client.feature_maps("shapes", ["block1.conv"], sample="triangle")
        job = client.optimize("shapes", layer="block3.relu", channels=[0, 1, 2, 3], steps=128)
        job = client.wait(job.id, progress=True)
        client.save_result(job, "patterns.png")

It speaks HTTP with httpx and parses answers into the service's own schemas; an error answer
raises :class:`ApiError` with the problem+json's ``code`` and ``detail``.
"""

from cnnviz_client.client import ApiError, Client, JobFailed

__all__ = ["ApiError", "Client", "JobFailed"]
