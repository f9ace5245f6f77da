# After `azd provision`: the same as postprovision.sh, for Windows.
Write-Host "MIMIC infrastructure is ready."
Write-Host "  Key Vault:           $env:AZURE_KEY_VAULT_NAME (server certificate '$env:AZURE_KEY_VAULT_SERVER_CERT')"
Write-Host "  Container registry:  $env:AZURE_CONTAINER_REGISTRY_ENDPOINT"
Write-Host "  Archive address:     $($env:ARCHIVE_HOST_NAME):$($env:ARCHIVE_PORT) (DICOM over mutual TLS)"
Write-Host "Next: onboard a modality in the Key Vault portal (docs/deploy.md, 'Onboard the first modality')."
