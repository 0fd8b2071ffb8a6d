# One image for every Switchyard component, with the telemetry extra (the OpenTelemetry SDK and
# its OTLP exporter) and the a2a extra (the gateway): the command picks the role
# (`supervisor run`, `tools run`, `agent run <role>`, `demo --connect`, ...).
#
#   docker build -t switchyard .            # or: podman build -t switchyard .
#
# With no package index at hand, put wheels of the dependencies and of setuptools in .wheels/
# first (`pip wheel . setuptools -w .wheels`, as deploy/podman/images.sh does): the build then
# installs from there and needs no network. The project itself is always built from the source.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
COPY . /src
RUN python3 -m venv /opt/switchyard \
 && if [ -d /src/.wheels ]; then offline="--no-index --find-links /src/.wheels"; fi \
 && /opt/switchyard/bin/pip install --no-cache-dir --disable-pip-version-check ${offline:-} '/src[telemetry,a2a]'

FROM ${BASE}
COPY --from=build /opt/switchyard /opt/switchyard
RUN useradd --uid 10001 --home-dir /data --create-home --shell /usr/sbin/nologin switchyard
USER switchyard
WORKDIR /data
ENV PATH=/opt/switchyard/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SWITCHYARD_DATA_DIR=/data \
    NATS_URL=nats://nats:4222
ENTRYPOINT ["switchyard"]
CMD ["--help"]
