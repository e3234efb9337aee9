// ephemerid on Azure: the function app and what it needs, in one resource group, and a second
// resource group that holds only job VMs and their network. `azd up` deploys it.
// Every connection is identity-based: no account key or connection string exists anywhere.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('azd environment name; names and tags every resource.')
param environmentName string

// Flex Consumption (the function app's plan) runs in these regions only: any other is refused
// before anything is created. Source: the regions Azure's own Flex Consumption azd template allows
// (Azure-Samples/functions-quickstart-python-http-azd, infra/main.bicep, read 2026-12-02), less its
// canary region; `az functionapp list-flexconsumption-locations` prints the live list. Keep
// docs/deploy.md's list equal to this one (tests/test_deploy_region.py checks both).
@minLength(1)
@description('Region of the function app, storage, Service Bus and monitoring (one that runs Flex Consumption).')
@allowed([
  'australiaeast'
  'australiasoutheast'
  'brazilsouth'
  'canadacentral'
  'centralindia'
  'centralus'
  'eastasia'
  'eastus'
  'eastus2'
  'francecentral'
  'germanywestcentral'
  'italynorth'
  'japaneast'
  'koreacentral'
  'northcentralus'
  'northeurope'
  'norwayeast'
  'southafricanorth'
  'southcentralus'
  'southeastasia'
  'southindia'
  'spaincentral'
  'swedencentral'
  'uaenorth'
  'uksouth'
  'ukwest'
  'westcentralus'
  'westeurope'
  'westus'
  'westus2'
  'westus3'
])
@metadata({ azd: { type: 'location' } })
param location string

@description('Regions (or region:zone) where job VMs may run, in order of preference. Empty: the location.')
param computeRegions string = ''

@description('Outbound internet for job VMs through a NAT gateway (needed to pip install the runner; about 32 USD a month).')
param jobsNatGateway bool = true

@description('Also create an Azure ML workspace and a GPU cluster that scales to zero.')
param enableAzureMl bool = false

@description('SKU of the Azure ML cluster nodes (when enableAzureMl).')
param amlClusterSku string = 'Standard_NC4as_T4_v3'

@description('Azure ML cluster: most nodes at once (jobs beyond them queue).')
param amlMaxNodes int = 4

@description('Azure ML cluster: seconds an idle node is kept (and billed) before it is released.')
param amlIdleSeconds int = 120

@description('Azure ML cluster: low-priority nodes (cheaper, can be preempted).')
param amlLowPriority bool = false

@description('Also create a container registry that job VMs pull environment.image from with their identity (AcrPull); VMs then keep the NAT gateway to reach it.')
param enableRegistry bool = false

@description('Also deploy the real-time prediction service as a Container App on a serverless GPU that scales to zero (needs enableRegistry and an image in it; docs/serving-azure.md).')
param enableServing bool = false

@description('The prediction service image in the project registry (e.g. cr<token>.azurecr.io/serving:1).')
param servingImage string = ''

@description('The model the prediction service follows: name@alias (e.g. tabular@production) or name:version.')
param servingModel string = ''

@description('The prediction service callers keys, name=key,name=key (kept in Key Vault).')
@secure()
param servingKeys string = ''

@description('The serverless GPU workload profile of the prediction service.')
param servingGpuProfile string = 'Consumption-GPU-NC8as-T4'

// The Azure ML names, known before the workspace exists: the function app is told them.
var amlWorkspace = enableAzureMl ? 'mlw-${token}' : ''
var amlCluster = 'gpu'

var token = toLower(uniqueString(subscription().id, environmentName, location))
// The registry's name and login server, known before it exists (alphanumerics only, 5-50).
var registryName = enableRegistry ? 'cr${token}' : ''
var vmRegistry = enableRegistry ? '${registryName}${environment().suffixes.acrLoginServer}' : ''
var tags = { 'azd-env-name': environmentName }
// The prediction service's container app, known before it exists: the function app is told its id.
var servingAppName = enableServing ? 'ca-serve-${token}' : ''
var servingAppId = enableServing ? '${appGroup.id}/providers/Microsoft.App/containerApps/${servingAppName}' : ''

resource appGroup 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: tags
}

// Job VMs live here and nowhere else: the reaper lists this group, and the function app's
// VM rights stop at its edge.
resource computeGroup 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${environmentName}-jobs'
  location: location
  tags: tags
}

module identities 'modules/identities.bicep' = {
  name: 'identities'
  scope: appGroup
  params: { location: location, tags: tags, token: token }
}

module compute 'modules/compute.bicep' = {
  name: 'compute'
  scope: computeGroup
  params: {
    location: location
    tags: tags
    functionPrincipalId: identities.outputs.functionPrincipalId
    vmPrincipalId: identities.outputs.vmPrincipalId
    // Azure ML nodes without public IPs reach Azure ML, Batch and the image registry outbound
    // only: with Azure ML on, the subnet keeps its NAT gateway.
    // So do job VMs that pull images from the registry (it has a public endpoint only).
    natGateway: jobsNatGateway || enableAzureMl || enableRegistry
  }
}

module app 'modules/app.bicep' = {
  name: 'app'
  scope: appGroup
  params: {
    location: location
    tags: tags
    token: token
    functionIdentityName: identities.outputs.functionIdentityName
    vmIdentityName: identities.outputs.vmIdentityName
    computeResourceGroup: computeGroup.name
    computeSubnetId: compute.outputs.subnetId
    computeRegions: empty(computeRegions) ? location : computeRegions
    amlWorkspace: amlWorkspace
    amlCluster: enableAzureMl ? amlCluster : ''
    amlClusterSku: amlClusterSku
    amlIdleSeconds: amlIdleSeconds
    amlLowPriority: amlLowPriority
    vmRegistry: vmRegistry
    servingAppId: servingAppId
    servingFollow: enableServing && contains(servingModel, '@') ? servingModel : ''
  }
}

module registry 'modules/registry.bicep' = if (enableRegistry) {
  name: 'registry'
  scope: appGroup
  params: {
    location: location
    tags: tags
    registryName: registryName
    vmIdentityName: identities.outputs.vmIdentityName
  }
}

module aml 'modules/aml.bicep' = if (enableAzureMl) {
  name: 'aml'
  scope: appGroup
  params: {
    location: location
    tags: tags
    token: token
    workspaceName: amlWorkspace
    clusterName: amlCluster
    clusterSku: amlClusterSku
    maxNodes: amlMaxNodes
    idleSeconds: amlIdleSeconds
    lowPriority: amlLowPriority
    storageAccountName: app.outputs.storageAccountName
    appInsightsId: app.outputs.appInsightsId
    functionPrincipalId: identities.outputs.functionPrincipalId
    vmIdentityName: identities.outputs.vmIdentityName
    subnetId: compute.outputs.subnetId
    vnetId: compute.outputs.vnetId
  }
}

module serving 'modules/serving.bicep' = if (enableServing) {
  name: 'serving'
  scope: appGroup
  params: {
    location: location
    tags: tags
    token: token
    appName: servingAppName
    functionPrincipalId: identities.outputs.functionPrincipalId
    registryServer: vmRegistry
    registryName: registryName
    image: servingImage
    model: servingModel
    keys: servingKeys
    storageAccountName: app.outputs.storageAccountName
    logsWorkspaceId: app.outputs.logsWorkspaceId
    gpuProfileType: servingGpuProfile
  }
  dependsOn: [ registry ]
}

output AZURE_LOCATION string = location
output AZURE_RESOURCE_GROUP string = appGroup.name
output AZURE_FUNCTION_APP_NAME string = app.outputs.functionAppName
output AZURE_STORAGE_ACCOUNT_NAME string = app.outputs.storageAccountName
output AZURE_EVENTGRID_TOPIC_NAME string = app.outputs.systemTopicName
output EPHEMERID_COMPUTE_RESOURCE_GROUP string = computeGroup.name
output EPHEMERID_SERVICEBUS_NAMESPACE string = app.outputs.serviceBusNamespace
output EPHEMERID_VM_REGISTRY string = vmRegistry
output EPHEMERID_SERVING_APP_ID string = servingAppId
