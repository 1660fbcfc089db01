"""The shared tier: a cache every replica of a fleet shares, in an S3-compatible object store.

``tier`` (one replica's view and background work), ``fleetfill`` (where a cold file comes
from), ``blobs`` (content-addressed verified files), ``peer`` (streaming a fill from the replica
doing it), ``readers`` and ``prune`` (the tier's budget, never cutting a read short).
"""
