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
@description('PostgreSQL connections for users at the server\'s compute size (main.bicep: AZURE_POSTGRES_USER_CONNECTIONS; 35 on B1ms).')
@minValue(10)
param postgresUserConnections int = 35
param blobEndpoint string
param blobContainer string
param keyVaultUri string
param serverCertificateName string
@description('Key Vault secret that signs the console\'s session cookies (main.bicep makes it once).')
param webSessionKeySecretName string = 'mimic-web-session-key'

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

@description('OpenID Connect issuer of the DICOMweb bearer tokens (Entra ID: https://login.microsoftonline.com/TENANT/v2.0); empty: no DICOMweb app.')
param oidcIssuer string = ''
@description('The audience (aud) DICOMweb tokens carry: the Entra app registration\'s Application ID URI.')
param oidcAudience string = ''
@description('DICOMweb token roles and their services as JSON (MIMIC_WEB_ROLES).')
param webRoles string = '{"DicomReader": ["find", "get"], "DicomWriter": ["find", "get", "store"]}'
@description('Origins whose browser viewers may call DICOMweb (comma-separated; empty: none).')
param webCorsOrigins string = ''
@description('The operator console\'s application (client) ID at the issuer; empty: console sign-in off.')
param webConsoleClientId string = ''
@minValue(1)
param webMinReplicas int = 1
@minValue(1)
param webMaxReplicas int = 4
@description('Concurrent HTTP requests per DICOMweb replica above which another replica starts.')
param concurrentRequestsPerWebReplica int = 50

var dicomPort = 11112
var opsPort = 8080
var webPort = 8042
var webAppName = '${appName}-web'
var webEnabled = !empty(oidcIssuer)
var tags = { 'azd-env-name': environmentName, 'azd-service-name': 'mimic' }

resource containerAppsEnvironment 'Microsoft.App/managedEnvironments@2024-03-01' existing = {
  name: containerAppsEnvironmentName
}

// PostgreSQL's connections, budgeted. Each process of either app (one per vCPU of its
// replica: MIMIC_WORKERS' default) holds a pool of its own, and PostgreSQL refuses every
// connection past its limit, and with it the C-STORE or request that needed it. So the
// processes of both apps at their maximum scale share the connections for users, less a
// few kept for a starting replica's migration (db-upgrade), `mimic reconcile` and an
// operator's psql. B1ms (35) with 6 + 4 replicas: 3 each (5 without the web app); at
// most 32, the setting's default. More replicas than the connections allow 2 each need a
// larger PostgreSQL (docs/deploy.md, "Scaling out"): nothing here refuses them.
// Each app's container has 1.0 vCPU (below): one worker process.
var archiveWorkers = 1
var webWorkers = 1
var reservedConnections = 5
var databaseProcesses = maxReplicas * archiveWorkers + (webEnabled ? webMaxReplicas * webWorkers : 0)
var databasePoolSize = min(32, max(2, (postgresUserConnections - reservedConnections) / databaseProcesses))

// Settings shared by the archive and the migration that runs before it.
var indexEnv = [
  { name: 'AZURE_CLIENT_ID', value: identityClientId }
  { name: 'MIMIC_DATABASE_URL', value: 'postgresql+psycopg://${identityName}@${postgresHost}:5432/${postgresDatabase}?sslmode=require' }
  { name: 'MIMIC_DATABASE_AUTH', value: 'entra' }
  { name: 'MIMIC_DATABASE_POOL_SIZE', value: string(databasePoolSize) }
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
      // Modalities connect over the internet with mutual TLS. The ops port (8080) is not
      // exposed to the internet: an internal mapping lets the web app inside the same
      // environment read /status/associations for the console's "now" page.
      ingress: {
        external: true
        transport: 'tcp'
        targetPort: dicomPort
        exposedPort: dicomPort
        additionalPortMappings: [
          {
            external: false
            targetPort: opsPort
            exposedPort: opsPort
          }
        ]
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
          // 1 vCPU (archiveWorkers) and 2 GiB per replica: room for 32 associations
          // streaming large objects.
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

// DICOMweb and the operator console (`mimic web`): the same image, index, objects, audit
// trail and Key Vault (the console shows the trusted certificates), behind HTTPS ingress.
// Deployed only once an OIDC issuer is configured: mimic web refuses to start without one.
resource web 'Microsoft.App/containerApps@2024-03-01' = if (webEnabled) {
  name: webAppName
  location: location
  tags: { 'azd-env-name': environmentName }
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${identityId}': {} }
  }
  properties: {
    environmentId: containerAppsEnvironment.id
    workloadProfileName: 'Consumption'
    configuration: {
      activeRevisionsMode: 'Single'
      // HTTPS only: the platform terminates TLS; plain HTTP is refused, not redirected.
      ingress: {
        external: true
        transport: 'http'
        targetPort: webPort
        allowInsecure: false
        // A browser stays with its replica. Every replica signs and accepts sessions with the
        // one MIMIC_WEB_SESSION_KEY (below) and reads the sign-outs of all of them from the
        // index (signed_out_sessions): the console does not need the affinity.
        stickySessions: {
          affinity: 'sticky'
        }
      }
      registries: [
        {
          server: registryEndpoint
          identity: identityId
        }
      ]
      // The console's session key: a Key Vault reference (no version: the latest, fetched
      // with the app's identity), the same for every replica and every revision, so a
      // session survives a restart, a scale event and a new image. The value is never in
      // the template, its parameters or outputs.
      secrets: [
        {
          name: 'web-session-key'
          keyVaultUrl: '${keyVaultUri}secrets/${webSessionKeySecretName}'
          identity: identityId
        }
      ]
    }
    template: {
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
          name: 'mimic-web'
          image: imageName
          args: ['web']
          env: concat(indexEnv, archiveEnv, [
            { name: 'MIMIC_OIDC_ISSUER', value: oidcIssuer }
            { name: 'MIMIC_OIDC_AUDIENCE', value: oidcAudience }
            { name: 'MIMIC_WEB_ROLES', value: webRoles }
            { name: 'MIMIC_WEB_CORS_ORIGINS', value: webCorsOrigins }
            { name: 'MIMIC_WEB_BASE_URL', value: 'https://${webAppName}.${containerAppsEnvironment.properties.defaultDomain}' }
            { name: 'MIMIC_WEB_OIDC_CLIENT_ID', value: webConsoleClientId }
            // The ingress ends TLS: derived from the request, the redirect URI would be
            // http://, which the issuer refuses (it must be the one registered).
            { name: 'MIMIC_WEB_OIDC_REDIRECT_URI', value: 'https://${webAppName}.${containerAppsEnvironment.properties.defaultDomain}/auth/callback' }
            // Every request comes from the ingress, which appends the browser's address to
            // X-Forwarded-For (and vouches for that entry only): per-address limits and the
            // audit trail name the browser, not the ingress.
            { name: 'MIMIC_WEB_PROXY_HOPS', value: '1' }
            // The serve app's ops listener, by its internal port mapping (see above).
            { name: 'MIMIC_WEB_SERVE_STATUS_URL', value: 'http://${appName}:${opsPort}' }
            // Shared by the replicas and by the worker processes of each.
            { name: 'MIMIC_WEB_SESSION_KEY', secretRef: 'web-session-key' }
          ])
          resources: { cpu: json('1.0'), memory: '2Gi' }
          probes: [
            {
              type: 'Startup'
              httpGet: { path: '/healthz', port: webPort }
              periodSeconds: 2
              failureThreshold: 30
              timeoutSeconds: 2
            }
            {
              type: 'Liveness'
              httpGet: { path: '/healthz', port: webPort }
              periodSeconds: 10
              failureThreshold: 3
              timeoutSeconds: 3
            }
            {
              type: 'Readiness'
              httpGet: { path: '/readyz', port: webPort }
              periodSeconds: 5
              failureThreshold: 2
              timeoutSeconds: 5
            }
          ]
        }
      ]
      scale: {
        minReplicas: webMinReplicas
        maxReplicas: webMaxReplicas
        rules: [
          {
            name: 'http-requests'
            http: {
              metadata: {
                concurrentRequests: string(concurrentRequestsPerWebReplica)
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
output DICOMWEB_URL string = webEnabled ? 'https://${web!.properties.configuration.ingress.fqdn}/dicomweb' : ''

