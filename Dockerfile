# fleetwatch daemon image.
#   docker build -t fleetwatch .
#   docker run --network host -v fleetwatch-data:/var/lib/fleetwatch \
#     -v /etc/fleetwatch/fleetwatch.toml:/etc/fleetwatch/fleetwatch.toml:ro fleetwatch
# Settings: mount a TOML at /etc/fleetwatch/fleetwatch.toml or set FLEETWATCH_<SECTION>__<KEY>
# environment variables (secrets: FLEETWATCH_MQTT__PASSWORD, FLEETWATCH_HTTP__API_TOKEN).
# The hot path is compiled by mypyc (setup.py) in a stage that has a C compiler; the
# image itself gets only the wheel.
FROM python:3.11 AS build
WORKDIR /src
COPY pyproject.toml setup.py README* ./
COPY fleetwatch ./fleetwatch
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels

# Non-root user owning only its state directory. The default config is empty: every
# setting has a default (store in /var/lib/fleetwatch, HTTP on 127.0.0.1:9464).
RUN groupadd --system --gid 10001 fleetwatch \
    && useradd --system --uid 10001 --gid fleetwatch --home-dir /var/lib/fleetwatch \
       --shell /usr/sbin/nologin fleetwatch \
    && install -d -o fleetwatch -g fleetwatch -m 0750 /var/lib/fleetwatch \
    && install -d -m 0755 /etc/fleetwatch \
    && printf '# fleetwatch settings: see docs/operating.md. Empty = all defaults.\n' \
       > /etc/fleetwatch/fleetwatch.toml

USER fleetwatch:fleetwatch
WORKDIR /var/lib/fleetwatch
VOLUME ["/var/lib/fleetwatch"]
EXPOSE 9464

# SIGTERM: stop taking messages, commit what is in hand, exit 0 (give it 10s+).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4).status != 200)"]

ENTRYPOINT ["fleetwatch"]
CMD ["run", "--config", "/etc/fleetwatch/fleetwatch.toml"]
