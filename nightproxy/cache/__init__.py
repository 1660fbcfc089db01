"""The pull-through cache: blobs on disk, their database, fills from upstreams."""
