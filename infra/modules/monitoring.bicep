// Log Analytics: the Container Apps environment sends the archive's stdout (JSON log lines,
// no patient data at INFO and above) and the platform's system logs here.

param name string
param location string
param tags object = {}

@description('Days the logs are kept.')
param retentionInDays int = 30

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    sku: { name: 'PerGB2018' }
    retentionInDays: retentionInDays
  }
}

output id string = workspace.id
output name string = workspace.name
