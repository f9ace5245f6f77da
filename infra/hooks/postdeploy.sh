#!/bin/sh
# After `azd deploy`: the address modalities use. The new revision takes traffic once its
# readiness probe (/readyz: index, object store, server certificate) answers 200.
set -eu
echo "MIMIC is deployed: modalities connect to ${ARCHIVE_HOST_NAME}:${ARCHIVE_PORT} with TLS."
echo "Revision health: Azure portal > ${SERVICE_MIMIC_NAME} > Revisions and replicas; logs in Log Analytics."
