// MIMIC on Azure Container Apps: everything the archive needs except the container app
// itself, which azd deploys from mimic.bicep with each new image (docs/deploy.md).
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; names and tags every resource.')
param environmentName string

@minLength(1)
@description('Azure region of every resource.')
param location string

@description('Object id of the deploying user or service principal (azd sets it): it may push images, onboard modalities and manage the server certificate.')
param principalId string = ''

@allowed(['User', 'ServicePrincipal', 'Group'])
@description('Kind of principal principalId names.')
param principalType string = 'User'

@description('Key Vault certificate the archive presents (MIMIC_KEYVAULT_SERVER_CERT).')
param serverCertificateName string = 'mimic-server'

@description('Create the first server certificate in Key Vault (issued by the vault itself).')
param createServerCertificate bool = true

@description('Key Vault secret that signs the console\'s session cookies (MIMIC_WEB_SESSION_KEY); made once, never rotated by a deployment.')
param webSessionKeySecretName string = 'mimic-web-session-key'

@description('PostgreSQL compute: Burstable B1ms is the smallest that suits a small site.')
param postgresSkuName string = 'Standard_B1ms'
@allowed(['Burstable', 'GeneralPurpose', 'MemoryOptimized'])
param postgresSkuTier string = 'Burstable'

@description('Blob Storage redundancy.')
@allowed(['Standard_ZRS', 'Standard_GZRS', 'Standard_RAGZRS', 'Standard_LRS'])
param storageSkuName string = 'Standard_ZRS'

// PostgreSQL's connections for users at each compute size: max_connections less the 15
// Azure keeps for itself ("Limits in Azure Database for PostgreSQL flexible server").
// mimic.bicep divides them among the apps' processes (MIMIC_DATABASE_POOL_SIZE); a size not
// listed here is counted as the smallest.
var postgresUserConnectionsBySku = {
  Standard_B1ms: 35
  Standard_B2s: 414
  Standard_B2ms: 844
  Standard_B4ms: 1703
  Standard_B8ms: 3422
  Standard_D2s_v3: 844
  Standard_D2ds_v4: 844
  Standard_D2ds_v5: 844
  Standard_D2ads_v5: 844
  Standard_D4s_v3: 1703
  Standard_D4ds_v4: 1703
  Standard_D4ds_v5: 1703
  Standard_D4ads_v5: 1703
  Standard_E2ds_v4: 1703
  Standard_E2ds_v5: 1703
  Standard_E2ads_v5: 1703
}
var postgresUserConnections = contains(postgresUserConnectionsBySku, postgresSkuName) ? postgresUserConnectionsBySku[postgresSkuName] : 35

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName }
var appName = 'ca-mimic-${resourceToken}'
var dicomPort = 11112

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: tags
}

module network 'modules/network.bicep' = {
  name: 'network'
  scope: rg
  params: {
    name: 'vnet-${resourceToken}'
    location: location
    tags: tags
  }
}

module blobDns 'modules/private-dns-zone.bicep' = {
  name: 'blob-dns'
  scope: rg
  params: {
    #disable-next-line no-hardcoded-env-urls
    name: 'privatelink.blob.${environment().suffixes.storage}'
    vnetId: network.outputs.id
    tags: tags
  }
}

module postgresDns 'modules/private-dns-zone.bicep' = {
  name: 'postgres-dns'
  scope: rg
  params: {
    name: 'psql-${resourceToken}.private.postgres.database.azure.com'
    vnetId: network.outputs.id
    tags: tags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    name: 'log-${resourceToken}'
    location: location
    tags: tags
  }
}

module identity 'modules/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-mimic-${resourceToken}'
    location: location
    tags: tags
  }
}

module registry 'modules/registry.bicep' = {
  name: 'registry'
  scope: rg
  params: {
    name: 'cr${resourceToken}'
    location: location
    tags: tags
    pullPrincipalId: identity.outputs.principalId
    pushPrincipalId: principalId
    pushPrincipalType: principalType
  }
}

module containerAppsEnvironment 'modules/container-apps-environment.bicep' = {
  name: 'container-apps-environment'
  scope: rg
  params: {
    name: 'cae-${resourceToken}'
    location: location
    tags: tags
    infrastructureSubnetId: network.outputs.containerAppsSubnetId
    logAnalyticsWorkspaceName: monitoring.outputs.name
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: 'st${resourceToken}'
    location: location
    tags: tags
    principalId: identity.outputs.principalId
    privateEndpointSubnetId: network.outputs.privateEndpointsSubnetId
    privateDnsZoneId: blobDns.outputs.id
    skuName: storageSkuName
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: 'kv-${resourceToken}'
    location: location
    tags: tags
    appPrincipalId: identity.outputs.principalId
    operatorPrincipalId: principalId
    operatorPrincipalType: principalType
  }
}

module postgres 'modules/postgres.bicep' = {
  name: 'postgres'
  scope: rg
  params: {
    name: 'psql-${resourceToken}'
    location: location
    tags: tags
    delegatedSubnetId: network.outputs.postgresSubnetId
    privateDnsZoneId: postgresDns.outputs.id
    adminName: identity.outputs.name
    adminPrincipalId: identity.outputs.principalId
    skuName: postgresSkuName
    skuTier: postgresSkuTier
  }
}

var archiveHostName = '${appName}.${containerAppsEnvironment.outputs.defaultDomain}'

module serverCertificate 'modules/server-certificate.bicep' = if (createServerCertificate) {
  name: 'server-certificate'
  scope: rg
  params: {
    location: location
    tags: tags
    vaultName: keyVault.outputs.name
    certificateName: serverCertificateName
    hostName: archiveHostName
    resourceToken: resourceToken
  }
}

// Always made (one secret; the web app, when deployed, reads it by a Key Vault reference).
module webSessionKey 'modules/web-session-key.bicep' = {
  name: 'web-session-key'
  scope: rg
  params: {
    location: location
    tags: tags
    vaultName: keyVault.outputs.name
    secretName: webSessionKeySecretName
    resourceToken: resourceToken
  }
}

// Read by azd (and by infra/mimic.parameters.json when azd deploys the app).
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_CONTAINER_REGISTRY_ENDPOINT string = registry.outputs.loginServer
output AZURE_CONTAINER_REGISTRY_NAME string = registry.outputs.name
output AZURE_CONTAINER_APPS_ENVIRONMENT_NAME string = containerAppsEnvironment.outputs.name
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output AZURE_KEY_VAULT_ENDPOINT string = keyVault.outputs.uri
output AZURE_KEY_VAULT_SERVER_CERT string = serverCertificateName
// The secret's name, not its value: nothing outside Azure ever holds the value.
output AZURE_KEY_VAULT_WEB_SESSION_KEY_NAME string = webSessionKey.outputs.secretName
output AZURE_POSTGRES_HOST string = postgres.outputs.fqdn
output AZURE_POSTGRES_DATABASE string = postgres.outputs.databaseName
output AZURE_POSTGRES_USER_CONNECTIONS int = postgresUserConnections
output AZURE_STORAGE_BLOB_ENDPOINT string = storage.outputs.blobEndpoint
output AZURE_STORAGE_CONTAINER string = storage.outputs.containerName
output SERVICE_MIMIC_NAME string = appName
output SERVICE_MIMIC_IDENTITY_ID string = identity.outputs.id
output SERVICE_MIMIC_IDENTITY_NAME string = identity.outputs.name
output SERVICE_MIMIC_IDENTITY_CLIENT_ID string = identity.outputs.clientId
// What a modality is configured with.
output ARCHIVE_HOST_NAME string = archiveHostName
output ARCHIVE_PORT int = dicomPort
