# MIMIC container image: `mimic serve` on 11112 (DICOM over TLS) and 8080 (health, metrics).
# Settings come only from MIMIC_* variables (docs/operator-guide.md); azd sets the Azure ones.

# --- build: the wheel, from the same files a source checkout installs -----------------------
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY mimic_server ./mimic_server
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- runtime: the wheel in a virtual environment, no compilers, a non-root user -------------
FROM python:3.11-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/mimic \
    PATH=/opt/mimic/bin:$PATH
RUN groupadd --system --gid 10001 mimic \
 && useradd --system --uid 10001 --gid mimic --no-create-home --shell /usr/sbin/nologin mimic \
 && install -d -o mimic -g mimic -m 0750 /var/lib/mimic
COPY --from=build /wheels /wheels
# The dependency versions the test suite verified (the pynetdicom patches check them too).
COPY constraints.txt /wheels/constraints.txt
RUN python -m venv /opt/mimic \
 && /opt/mimic/bin/pip install --no-cache-dir -c /wheels/constraints.txt /wheels/*.whl \
 && rm -rf /wheels

# The data directory holds only temporary files in the Azure configuration: the index is
# PostgreSQL, objects are in Blob Storage, certificates in Key Vault.
ENV MIMIC_HOST=0.0.0.0 \
    MIMIC_PORT=11112 \
    MIMIC_OPS_HOST=0.0.0.0 \
    MIMIC_OPS_PORT=8080 \
    MIMIC_WEB_HOST=0.0.0.0 \
    MIMIC_WEB_PORT=8042 \
    MIMIC_DATA_DIR=/var/lib/mimic \
    MIMIC_LOG_FORMAT=json
WORKDIR /var/lib/mimic
USER 10001:10001
EXPOSE 11112 8080 8042
# No HEALTHCHECK: Container Apps ignores it and probes /healthz and /readyz on 8080 itself
# (`mimic web`: on 8042)
# (infra/mimic.bicep); a HEALTHCHECK would need curl or a second Python in the image.
ENTRYPOINT ["mimic"]
CMD ["serve"]
