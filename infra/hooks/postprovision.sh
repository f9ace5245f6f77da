#!/bin/sh
# After `azd provision`: say what was made and what the operator does next. Everything that
# had to happen (database administrator, first server certificate) happened in Azure during
# provisioning; nothing here reaches the database or the vault's data plane.
set -eu
echo "MIMIC infrastructure is ready."
echo "  Key Vault:           ${AZURE_KEY_VAULT_NAME} (server certificate '${AZURE_KEY_VAULT_SERVER_CERT}')"
echo "  Container registry:  ${AZURE_CONTAINER_REGISTRY_ENDPOINT}"
echo "  Archive address:     ${ARCHIVE_HOST_NAME}:${ARCHIVE_PORT} (DICOM over mutual TLS)"
echo "Next: onboard a modality in the Key Vault portal (docs/deploy.md, 'Onboard the first modality')."
