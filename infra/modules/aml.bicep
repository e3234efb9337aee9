// Optional (enableAzureMl): an Azure ML workspace and a GPU cluster that scales to zero, for
// the azure-ml backend (docs/azure-ml.md). The cluster's nodes run as the jobs' identity, which
// can read and write the job containers and nothing else; idle nodes go away after idleSeconds.
// Also: the environment the jobs run in (the runner installed on a CUDA image) and the datastore
// on the runs container that the jobs declare their folder and outputs on.
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
  name: workspaceName
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
  name: clusterName
  location: location
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

// The jobs' environment: what EPHEMERID_AML_ENVIRONMENT names (azureml:ephemerid-runner:1).
var runnerCondaFile = '''
name: ephemerid-runner
channels:
  - conda-forge
dependencies:
  - python=3.11
  - pip
  - pip:
      - ephemerid[azure]==0.1.0
      - torch==2.13.0
'''

resource runnerEnvironment 'Microsoft.MachineLearningServices/workspaces/environments@2024-04-01' = {
  parent: workspace
  name: 'ephemerid-runner'
  properties: { description: 'The ephemerid runner on a CUDA image' }
}

resource runnerEnvironmentVersion 'Microsoft.MachineLearningServices/workspaces/environments/versions@2024-04-01' = {
  parent: runnerEnvironment
  name: '1'
  properties: {
    image: 'mcr.microsoft.com/azureml/openmpi4.1.0-cuda11.8-cudnn8-ubuntu22.04:latest'
    condaFile: runnerCondaFile
    osType: 'Linux'
  }
}

// The runs container as a datastore (identity-based, no key): EPHEMERID_AML_DATASTORE.
resource runsDatastore 'Microsoft.MachineLearningServices/workspaces/datastores@2024-04-01' = {
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
output environmentId string = runnerEnvironmentVersion.id
