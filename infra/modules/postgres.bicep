// Azure Database for PostgreSQL Flexible Server, the index: Microsoft Entra authentication
// only (password login off), TLS required, backups on, reachable only inside the VNet.
// The app's managed identity is the server's Entra administrator, so it can create the
// schema (`mimic db upgrade`) and log in with a token (MIMIC_DATABASE_AUTH=entra) without any
// step that needs a SQL session from the operator's machine (docs/deploy.md explains why).

param name string
param location string
param tags object = {}

param delegatedSubnetId string
param privateDnsZoneId string

@description('Database that holds the index.')
param databaseName string = 'mimic'

@description('The app identity: name (its PostgreSQL role name) and principal id.')
param adminName string
param adminPrincipalId string

param skuName string = 'Standard_B1ms'
@allowed(['Burstable', 'GeneralPurpose', 'MemoryOptimized'])
param skuTier string = 'Burstable'
param storageSizeGB int = 32
@minValue(7)
@maxValue(35)
param backupRetentionDays int = 7
param version string = '16'

resource server 'Microsoft.DBforPostgreSQL/flexibleServers@2022-12-01' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: skuName
    tier: skuTier
  }
  properties: {
    version: version
    storage: { storageSizeGB: storageSizeGB }
    backup: {
      backupRetentionDays: backupRetentionDays
      geoRedundantBackup: 'Disabled'
    }
    highAvailability: { mode: 'Disabled' }
    network: {
      delegatedSubnetResourceId: delegatedSubnetId
      privateDnsZoneArmResourceId: privateDnsZoneId
    }
    authConfig: {
      activeDirectoryAuth: 'Enabled'
      passwordAuth: 'Disabled'
      tenantId: subscription().tenantId
    }
  }
}

resource requireTls 'Microsoft.DBforPostgreSQL/flexibleServers/configurations@2022-12-01' = {
  parent: server
  name: 'require_secure_connection'
  properties: {
    value: 'on'
    source: 'user-override'
  }
}

resource database 'Microsoft.DBforPostgreSQL/flexibleServers/databases@2022-12-01' = {
  parent: server
  name: databaseName
  properties: {
    charset: 'UTF8'
    collation: 'en_US.utf8'
  }
  dependsOn: [requireTls]
}

resource admin 'Microsoft.DBforPostgreSQL/flexibleServers/administrators@2022-12-01' = {
  parent: server
  name: adminPrincipalId
  properties: {
    principalName: adminName
    principalType: 'ServicePrincipal'
    tenantId: subscription().tenantId
  }
  dependsOn: [database]
}

output name string = server.name
output fqdn string = server.properties.fullyQualifiedDomainName
output databaseName string = database.name
