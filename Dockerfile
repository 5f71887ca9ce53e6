# Meridian in a `FROM scratch` image: one static binary, nothing else (no base image can be
# pulled on the build machines, and a node needs no shell or libc files).
#
# Build it with `docker/build-image.sh` (static binary → staging directory → this file).
# The build context is that staging directory, not the repository: it holds `meridian`
# and two empty directories to become /data and /certs.
FROM scratch
COPY meridian /meridian
# Owned by the unprivileged user, so the named volumes Docker seeds from them are writable.
COPY --chown=65532:65532 empty/ /data/
COPY --chown=65532:65532 empty/ /certs/
USER 65532:65532
ENV MERIDIAN_DATA_DIR=/data \
    MERIDIAN_HTTP_ADDR=0.0.0.0:7474 \
    MERIDIAN_CLUSTER_BIND_ADDR=0.0.0.0:7688
VOLUME /data
EXPOSE 7474 7688
# Exec form only: there is no shell in the image.
HEALTHCHECK --interval=5s --timeout=4s --start-period=10s --retries=3 CMD ["/meridian", "healthcheck"]
ENTRYPOINT ["/meridian"]
