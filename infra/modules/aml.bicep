// Optional (enableAzureMl): an Azure ML workspace and a GPU cluster that scales to zero, for
// the azure-ml backend (docs/azure-ml.md). The cluster's nodes run as the jobs' identity, which
// can read and write the job containers and nothing else; idle nodes go away after idleSeconds.
// Also: the datastore on the runs container that the jobs declare their folder and outputs on.
// No environment: the function app registers the runner's own, versioned by its content, on the
// first job that needs a version (src/ephemerid/compute/aml_environment.py); a fixed version
// here could not follow an edit of its definition (a version cannot change once registered).
//
// The nodes have no public IP and sit in the jobs subnet. Azure ML then requires a private
// endpoint of the workspace in that VNet (a cluster without one is refused at create time), and the
// nodes must resolve the workspace's names to it: the endpoint below, and the two private DNS
// zones Azure ML's endpoint uses, linked to the VNet. The workspace stays reachable from the public
// network too, for the function app (which is not in the VNet). docs/deploy.md weighs this against
// the workspace's managed network.
//
// API version 2025-12-01 throughout: a stable version whose workspace type has
// systemDatastoresAuthMode (Azure's REST spec and azure-ai-ml's own REST models for 2025-12-01 have
// it; 2024-10-01 does not). tests/test_deploy_aml.py pins it and checks the property names.
param location string
param tags object
param token string
param workspaceName string
param clusterName string
param clusterSku string
param maxNodes int
param idleSeconds int
param lowPriority bool
param storageAccountName string
param appInsightsId string
param functionPrincipalId string
param vmIdentityName string
param subnetId string

@description('Resource id of the jobs VNet, linked to the private DNS zones of the workspace endpoint.')
param vnetId string

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

resource workspace 'Microsoft.MachineLearningServices/workspaces@2025-12-01' = {
  name: workspaceName
  location: location
  tags: tags
  identity: { type: 'SystemAssigned' }
  properties: {
    storageAccount: storage.id
    keyVault: vault.id
    applicationInsights: appInsightsId
    systemDatastoresAuthMode: 'Identity'
    publicNetworkAccess: 'Enabled'
  }
}

// Azure ML's private link zones in the public cloud (api: the workspace's REST endpoints;
// notebooks: its notebook endpoint, which the endpoint registers too).
var privateDnsZoneNames = [
  'privatelink.api.azureml.ms'
  'privatelink.notebooks.azure.net'
]

resource privateDnsZones 'Microsoft.Network/privateDnsZones@2020-06-01' = [for zone in privateDnsZoneNames: {
  name: zone
  location: 'global'
  tags: tags
}]

resource privateDnsLinks 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2020-06-01' = [for (zone, i) in privateDnsZoneNames: {
  parent: privateDnsZones[i]
  name: 'vnet-jobs'
  location: 'global'
  tags: tags
  properties: {
    registrationEnabled: false
    virtualNetwork: { id: vnetId }
  }
}]

resource workspaceEndpoint 'Microsoft.Network/privateEndpoints@2024-05-01' = {
  name: 'pe-${workspaceName}'
  location: location
  tags: tags
  properties: {
    subnet: { id: subnetId }
    privateLinkServiceConnections: [
      {
        name: 'amlworkspace'
        properties: {
          privateLinkServiceId: workspace.id
          groupIds: [ 'amlworkspace' ]
        }
      }
    ]
  }
}

resource workspaceEndpointDns 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-05-01' = {
  parent: workspaceEndpoint
  name: 'default'
  properties: {
    privateDnsZoneConfigs: [for (zone, i) in privateDnsZoneNames: {
      name: replace(zone, '.', '-')
      properties: { privateDnsZoneId: privateDnsZones[i].id }
    }]
  }
}

// Created once the workspace's endpoint and its names resolve in the VNet: a cluster without
// public IPs is refused before that.
resource cluster 'Microsoft.MachineLearningServices/workspaces/computes@2025-12-01' = {
  parent: workspace
  name: clusterName
  location: location
  dependsOn: [ workspaceEndpointDns, privateDnsLinks ]
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${vmIdentity.id}': {} }
  }
  properties: {
    computeType: 'AmlCompute'
    properties: {
      vmSize: clusterSku
      vmPriority: lowPriority ? 'LowPriority' : 'Dedicated'
      scaleSettings: { minNodeCount: 0, maxNodeCount: maxNodes, nodeIdleTimeBeforeScaleDown: 'PT${idleSeconds}S' }
      enableNodePublicIp: false
      subnet: { id: subnetId }
    }
  }
}

// The runs container as a datastore (identity-based, no key): EPHEMERID_AML_DATASTORE.
resource runsDatastore 'Microsoft.MachineLearningServices/workspaces/datastores@2025-12-01' = {
  parent: workspace
  name: 'ephemerid_runs'
  properties: {
    datastoreType: 'AzureBlob'
    accountName: storage.name
    containerName: 'runs'
    endpoint: environment().suffixes.storage
    protocol: 'https'
    credentials: { credentialsType: 'None' }
    serviceDataAccessAuthIdentity: 'WorkspaceSystemAssignedIdentity'
  }
}

// AzureML Data Scientist: every write in the workspace but the computes' and the workspace's own,
// so the app submits, reads and cancels jobs and registers its runner environment's versions.
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
