# After `azd deploy`: the same as postdeploy.sh, for Windows.
Write-Host "MIMIC is deployed: modalities connect to $($env:ARCHIVE_HOST_NAME):$($env:ARCHIVE_PORT) with TLS."
Write-Host "Revision health: Azure portal > $env:SERVICE_MIMIC_NAME > Revisions and replicas; logs in Log Analytics."
