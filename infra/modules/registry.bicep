// The container registry azd pushes the image to (remote build: no Docker on the operator's
// machine). Admin user off: the app pulls with its managed identity (AcrPull), the deploying
// principal pushes with its Entra login (AcrPush).

param name string
param location string
param tags object = {}

@description('Principal id of the app identity (AcrPull).')
param pullPrincipalId string

@description('Principal id of the deploying user or service principal (AcrPush); empty = none.')
param pushPrincipalId string = ''

@allowed(['User', 'ServicePrincipal', 'Group'])
param pushPrincipalType string = 'User'

var acrPull = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '7f951dda-4ed3-4680-a7ca-43fe172d538d')
var acrPush = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '8311e382-0749-4cb8-b61a-304f252e45ec')

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  name: name
  location: location
  tags: tags
  sku: { name: 'Basic' }
  properties: {
    adminUserEnabled: false
    anonymousPullEnabled: false
    publicNetworkAccess: 'Enabled'
  }
}

resource pull 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: registry
  name: guid(registry.id, pullPrincipalId, acrPull)
  properties: {
    roleDefinitionId: acrPull
    principalId: pullPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource push 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(pushPrincipalId)) {
  scope: registry
  name: guid(registry.id, pushPrincipalId, acrPush)
  properties: {
    roleDefinitionId: acrPush
    principalId: pushPrincipalId
    principalType: pushPrincipalType
  }
}

output name string = registry.name
output loginServer string = registry.properties.loginServer
