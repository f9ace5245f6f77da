// The archive: one Container App, deployed by `azd deploy` with each new image (azd's
// revision-based strategy), so image, settings, probes and the schema migration change
// together in one revision. Everything it uses comes from main.bicep's outputs.

@minLength(1)
param environmentName string
param location string = resourceGroup().location

param appName string
param containerAppsEnvironmentName string
param registryEndpoint string

@description('The image azd built and pushed (SERVICE_MIMIC_IMAGE_NAME).')
param imageName string

param identityId string
param identityClientId string
@description('The identity\'s name: its PostgreSQL role (it is the server\'s Entra administrator).')
param identityName string

param postgresHost string
param postgresDatabase string
param blobEndpoint string
param blobContainer string
param keyVaultUri string
param serverCertificateName string

@description('The archive\'s AE title.')
param aeTitle string = 'MIMIC'

@description('Replicas always running: 2 keeps the archive up through a replica restart.')
@minValue(1)
param minReplicas int = 2
@minValue(1)
param maxReplicas int = 6

@description('Open DICOM connections per replica above which another replica starts.')
param concurrentConnectionsPerReplica int = 16

@description('On SIGTERM, seconds open associations may finish (MIMIC_DRAIN_SECONDS).')
param drainSeconds int = 25

var dicomPort = 11112
var opsPort = 8080
var tags = { 'azd-env-name': environmentName, 'azd-service-name': 'mimic' }

resource containerAppsEnvironment 'Microsoft.App/managedEnvironments@2024-03-01' existing = {
  name: containerAppsEnvironmentName
}

// Settings shared by the archive and the migration that runs before it.
var indexEnv = [
  { name: 'AZURE_CLIENT_ID', value: identityClientId }
  { name: 'MIMIC_DATABASE_URL', value: 'postgresql+psycopg://${identityName}@${postgresHost}:5432/${postgresDatabase}?sslmode=require' }
  { name: 'MIMIC_DATABASE_AUTH', value: 'entra' }
]
var archiveEnv = [
  { name: 'MIMIC_AE_TITLE', value: aeTitle }
  { name: 'MIMIC_BLOB_ACCOUNT_URL', value: blobEndpoint }
  { name: 'MIMIC_BLOB_CONTAINER', value: blobContainer }
  { name: 'MIMIC_BLOB_CREATE_CONTAINER', value: 'false' }
  { name: 'MIMIC_KEYVAULT_URL', value: keyVaultUri }
  { name: 'MIMIC_KEYVAULT_SERVER_CERT', value: serverCertificateName }
  { name: 'MIMIC_DRAIN_SECONDS', value: string(drainSeconds) }
]

resource app 'Microsoft.App/containerApps@2024-03-01' = {
  name: appName
  location: location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${identityId}': {} }
  }
  properties: {
    environmentId: containerAppsEnvironment.id
    workloadProfileName: 'Consumption'
    configuration: {
      activeRevisionsMode: 'Single'
      // Modalities connect over the internet with mutual TLS; the ops port (8080) is not
      // exposed: only the platform's probes reach it.
      ingress: {
        external: true
        transport: 'tcp'
        targetPort: dicomPort
        exposedPort: dicomPort
      }
      registries: [
        {
          server: registryEndpoint
          identity: identityId
        }
      ]
    }
    template: {
      // Each replica first brings the index schema to this image's head (a no-op when it is
      // current); replicas starting together retry until one has migrated.
      initContainers: [
        {
          name: 'db-upgrade'
          image: imageName
          args: ['db', 'upgrade']
          env: indexEnv
          resources: { cpu: json('0.5'), memory: '1Gi' }
        }
      ]
      containers: [
        {
          name: 'mimic'
          image: imageName
          args: ['serve']
          env: concat(indexEnv, archiveEnv)
          // 1 vCPU and 2 GiB per replica: room for 32 associations streaming large objects.
          resources: { cpu: json('1.0'), memory: '2Gi' }
          probes: [
            {
              type: 'Startup'
              httpGet: { path: '/healthz', port: opsPort }
              periodSeconds: 2
              failureThreshold: 30
              timeoutSeconds: 2
            }
            {
              type: 'Liveness'
              httpGet: { path: '/healthz', port: opsPort }
              periodSeconds: 10
              failureThreshold: 3
              timeoutSeconds: 3
            }
            {
              type: 'Readiness'
              httpGet: { path: '/readyz', port: opsPort }
              periodSeconds: 5
              failureThreshold: 2
              timeoutSeconds: 5
            }
          ]
        }
      ]
      // Longer than the drain, so open associations finish before the platform kills.
      terminationGracePeriodSeconds: drainSeconds + 15
      scale: {
        minReplicas: minReplicas
        maxReplicas: maxReplicas
        rules: [
          {
            name: 'dicom-connections'
            tcp: {
              metadata: {
                concurrentConnections: string(concurrentConnectionsPerReplica)
              }
            }
          }
        ]
      }
    }
  }
}

output SERVICE_MIMIC_NAME string = app.name
output ARCHIVE_HOST_NAME string = app.properties.configuration.ingress.fqdn
