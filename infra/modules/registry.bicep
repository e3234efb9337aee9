// The container registry job VMs pull `environment.image` from (optional: enableRegistry). The VMs'
// identity may pull (AcrPull) from it and nothing else; the registry has no admin user, so no
// password for it exists anywhere: the runner on a VM trades the identity's token for a registry
// token (src/ephemerid/envs/registry.py). Push images with your own identity (az acr login,
// az acr import); the app setting EPHEMERID_VM_REGISTRY names its login server.
param location string
param tags object
param registryName string
param vmIdentityName string

var roles = loadJsonContent('../roles.json')

resource vmIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' existing = {
  name: vmIdentityName
}

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  name: registryName
  location: location
  tags: tags
  sku: { name: 'Basic' }
  properties: {
    adminUserEnabled: false
    publicNetworkAccess: 'Enabled'
  }
}

resource vmPull 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(registry.id, vmIdentity.id, roles.acrPull)
  scope: registry
  properties: {
    principalId: vmIdentity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.acrPull)
  }
}

output loginServer string = registry.properties.loginServer
