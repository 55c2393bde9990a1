"""The notebook SDK: one ``Client``, a module per room.

    from loophub.client import Client
    client = Client()                 # inside the hub: the notebook's user
    client.datasets.list()            # datasets: import, records, versions, export
    client.labeling.progress("pets")  # labeling: leases, predictions, agreement, review
    client.scheduler.queue()          # the fair scheduler: requests, queue, usage
    client.jobs.list()                # long operations: progress, logs, cancel

``stream_to_file`` writes a streamed response to disk without holding it in memory.
"""

from loophub.client.core import Client, discover_api_url, discover_token, stream_to_file

__all__ = ["Client", "discover_api_url", "discover_token", "stream_to_file"]
