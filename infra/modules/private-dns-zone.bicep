// A private DNS zone linked to the VNet, so that names of private endpoints and of the
// VNet-integrated PostgreSQL server resolve to private addresses inside it.

param name string
param vnetId string
param tags object = {}

resource zone 'Microsoft.Network/privateDnsZones@2020-06-01' = {
  name: name
  location: 'global'
  tags: tags
}

resource link 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2020-06-01' = {
  parent: zone
  name: 'vnet'
  location: 'global'
  tags: tags
  properties: {
    registrationEnabled: false
    virtualNetwork: { id: vnetId }
  }
}

output id string = zone.id
output name string = zone.name
