// Optional (enableAzureMl): an Azure ML workspace and a GPU cluster that scales to zero, for
// the Azure ML backend. The cluster's nodes run as the jobs' identity, which can read and
// write the job containers and nothing else; idle nodes go away after 120 s.
param location string
param tags object
param token string
param clusterSku string
param storageAccountName string
param appInsightsId string
param functionPrincipalId string
param vmIdentityName string
param subnetId string

var roles = loadJsonContent('../roles.json')

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource vmIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' existing = {
  name: vmIdentityName
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: 'kv-${take(token, 20)}'
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: { family: 'A', name: 'standard' }
    enableRbacAuthorization: true
    enableSoftDelete: true
  }
}

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-04-01' = {
  name: 'mlw-${token}'
  location: location
  tags: tags
  identity: { type: 'SystemAssigned' }
  properties: {
    storageAccount: storage.id
    keyVault: vault.id
    applicationInsights: appInsightsId
    systemDatastoresAuthMode: 'identity'
  }
}

resource cluster 'Microsoft.MachineLearningServices/workspaces/computes@2024-04-01' = {
  parent: workspace
  name: 'gpu'
  location: location
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${vmIdentity.id}': {} }
  }
  properties: {
    computeType: 'AmlCompute'
    properties: {
      vmSize: clusterSku
      vmPriority: 'Dedicated'
      scaleSettings: { minNodeCount: 0, maxNodeCount: 4, nodeIdleTimeBeforeScaleDown: 'PT120S' }
      enableNodePublicIp: false
      subnet: { id: subnetId }
    }
  }
}

resource functionSubmits 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, functionPrincipalId, roles.azureMlDataScientist)
  scope: workspace
  properties: {
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.azureMlDataScientist)
  }
}

output workspaceName string = workspace.name
output clusterName string = cluster.name
