// The key that signs the operator console's session cookies (MIMIC_WEB_SESSION_KEY): one
// Key Vault secret that every replica of the web app reads (a Key Vault reference of the
// container app), so a session signed by one replica is accepted by all, and outlives a
// replica's restart or a scale event. Without it each replica drew its own random key.
//
// It is made once, in Azure, by a deployment script with its own identity, as the server
// certificate is: the value is drawn inside the script's container, written to the vault
// and never printed, never a template parameter or output, never in the azd environment or
// the deployment history. An existing secret is left alone, so `azd up` again does not
// rotate it (which would sign everybody out); docs/deploy.md says how to rotate it.
// (A secret resource in Bicep would be re-written with each deployment, and its value would
// be a parameter: newGuid() can only be a parameter's default, drawn anew each time.)

param location string
param tags object = {}
param vaultName string

@description('Key Vault secret name of the session key.')
param secretName string

@description('Used to make a unique name for the script identity.')
param resourceToken string

@description('Changes on each deployment so the (idempotent) script runs again.')
param runTag string = utcNow()

var secretsOfficer = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7')

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: vaultName
}

resource scriptIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-key-${resourceToken}'
  location: location
  tags: tags
}

resource officer 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: vault
  name: guid(vault.id, scriptIdentity.id, secretsOfficer)
  properties: {
    roleDefinitionId: secretsOfficer
    principalId: scriptIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource script 'Microsoft.Resources/deploymentScripts@2023-08-01' = {
  name: 'create-web-session-key'
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
      { name: 'SECRET', value: secretName }
    ]
    // 48 random bytes, base64: 64 characters (MIMIC_WEB_SESSION_KEY needs 32 or more). The
    // value goes from a file (not the command line) to the vault, and `-o none` keeps az from
    // printing it: the script's log is kept with the deployment for an hour.
    scriptContent: '''
set -eu
umask 077
trap 'rm -f session-key' EXIT
# The role assignment may take a few minutes to reach Key Vault: retry. Only SecretNotFound
# says there is no secret. The vault's refusal (Forbidden) says "Assignment: (not found)"
# and is waited out: taken for an absent secret, a new key would be written over an
# existing one, or the deployment would fail where a wait does.
for attempt in $(seq 1 30); do
  if out=$(az keyvault secret show --vault-name "$VAULT" --name "$SECRET" --query id -o tsv 2>&1); then
    echo "secret $SECRET exists, left as it is: $out"; exit 0
  fi
  case "$out" in
    *Forbidden*) ;;
    *SecretNotFound*)
      head -c 48 /dev/urandom | base64 | tr -d '\n' > session-key
      az keyvault secret set --vault-name "$VAULT" --name "$SECRET" --file session-key --encoding utf-8 -o none
      rm -f session-key
      echo "secret $SECRET created"; exit 0 ;;
  esac
  echo "waiting for access to $VAULT ($attempt): $out"; sleep 20
done
exit 1
'''
  }
  dependsOn: [officer]
}

output secretName string = secretName
