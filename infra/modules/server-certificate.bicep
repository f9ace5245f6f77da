// The first server certificate: a certificate the vault itself issues (issuer 'Self') for the
// archive's host name, renewed by the vault 30 days before it expires (MIMIC loads each new
// version without a restart). ARM has no resource for Key Vault certificates, so a deployment
// script creates it once, in Azure, with its own identity (Key Vault Certificates Officer on
// this vault only); nothing on the operator's machine talks to the vault's data plane.
// An existing certificate of that name is left alone (import your CA's certificate over it).

param location string
param tags object = {}
param vaultName string

@description('Key Vault certificate name (MIMIC_KEYVAULT_SERVER_CERT).')
param certificateName string

@description('Host name modalities connect to: subject CN and DNS SAN.')
param hostName string

@description('Used to make a unique name for the script identity.')
param resourceToken string

@description('Changes on each deployment so the (idempotent) script runs again.')
param runTag string = utcNow()

var certificatesOfficer = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', 'a4417e6f-fecd-4de8-b567-7b0420b89ede')

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: vaultName
}

resource scriptIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-cert-${resourceToken}'
  location: location
  tags: tags
}

resource officer 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: vault
  name: guid(vault.id, scriptIdentity.id, certificatesOfficer)
  properties: {
    roleDefinitionId: certificatesOfficer
    principalId: scriptIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

var policy = {
  issuerParameters: { name: 'Self' }
  keyProperties: { exportable: true, keyType: 'RSA', keySize: 2048, reuseKey: true }
  secretProperties: { contentType: 'application/x-pkcs12' }
  x509CertificateProperties: {
    subject: 'CN=${hostName}'
    subjectAlternativeNames: { dnsNames: [hostName] }
    ekus: ['1.3.6.1.5.5.7.3.1']
    keyUsage: ['digitalSignature', 'keyEncipherment']
    validityInMonths: 12
  }
  lifetimeActions: [
    {
      action: { actionType: 'AutoRenew' }
      trigger: { daysBeforeExpiry: 30 }
    }
  ]
}

resource script 'Microsoft.Resources/deploymentScripts@2023-08-01' = {
  name: 'create-server-certificate'
  location: location
  tags: tags
  kind: 'AzureCLI'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${scriptIdentity.id}': {} }
  }
  properties: {
    azCliVersion: '2.61.0'
    forceUpdateTag: runTag
    retentionInterval: 'PT1H'
    cleanupPreference: 'OnSuccess'
    timeout: 'PT15M'
    environmentVariables: [
      { name: 'VAULT', value: vaultName }
      { name: 'CERT', value: certificateName }
      { name: 'POLICY', value: string(policy) }
    ]
    scriptContent: '''
set -eu
# The role assignment may take a few minutes to reach Key Vault: retry. Only
# CertificateNotFound says there is no certificate. The vault's refusal (Forbidden) says
# "Assignment: (not found)" and is waited out: taken for an absent certificate, a new one
# would be issued over an existing one, or the deployment would fail where a wait does.
for attempt in $(seq 1 30); do
  if out=$(az keyvault certificate show --vault-name "$VAULT" --name "$CERT" --query id -o tsv 2>&1); then
    echo "certificate $CERT exists: $out"; exit 0
  fi
  case "$out" in
    *Forbidden*) ;;
    *CertificateNotFound*)
      echo "$POLICY" > policy.json
      az keyvault certificate create --vault-name "$VAULT" --name "$CERT" --policy @policy.json -o none
      echo "certificate $CERT created"; exit 0 ;;
  esac
  echo "waiting for access to $VAULT ($attempt): $out"; sleep 20
done
exit 1
'''
  }
  dependsOn: [officer]
}
