// The function app and what it talks to: storage (bucket, job table, queues, the deployment
// package), Service Bus, monitoring, the Event Grid system topic, and the function identity's
// data-plane roles on each, scoped to the resource (never the subscription).
param location string
param tags object
param token string
param functionIdentityName string
param vmIdentityName string
param computeResourceGroup string
param computeSubnetId string
param computeRegions string
// the azure-ml backend: empty names leave it off (enableAzureMl=false)
param amlWorkspace string
param amlCluster string
param amlClusterSku string
param amlIdleSeconds int
param amlLowPriority bool
@description('The login server of the registry job VMs pull environment.image from; empty: none.')
param vmRegistry string = ''
@description('The prediction service container app the deploy route updates (enableServing); empty: none.')
param servingAppId string = ''
@description('name@alias the prediction service follows: a job promoting under it redeploys it; empty: none.')
param servingFollow string = ''

var roles = loadJsonContent('../roles.json')
// The names the code uses (ephemerid.names, ephemerid.functions); tests/test_deploy.py checks.
var incomingContainer = 'incoming'
var runsContainer = 'runs'
var modelsContainer = 'models'
var jobContainers = [ incomingContainer, runsContainer, modelsContainer ]
var deploymentContainer = 'app-package'
var jobsQueue = 'jobs'
var jobsTable = 'jobs'

resource functionIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' existing = {
  name: functionIdentityName
}

resource vmIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' existing = {
  name: vmIdentityName
}

// -- storage --------------------------------------------------------------------------------

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: 'st${token}'
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: { name: 'Standard_LRS' }
  properties: {
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    defaultToOAuthAuthentication: true
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource containers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [for name in concat(jobContainers, [ deploymentContainer ]): {
  parent: blobService
  name: name
  properties: { publicAccess: 'None' }
}]

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [for name in [ jobsQueue, '${jobsQueue}-poison' ]: {
  parent: queueService
  name: name
}]

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource table 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = {
  parent: tableService
  name: jobsTable
}

// -- Service Bus: Basic has queues, dead-lettering and no monthly base charge ----------------

resource serviceBus 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' = {
  name: 'sb-${token}'
  location: location
  tags: tags
  sku: { name: 'Basic', tier: 'Basic' }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
  }
}

resource serviceBusQueue 'Microsoft.ServiceBus/namespaces/queues@2022-10-01-preview' = {
  parent: serviceBus
  name: jobsQueue
  properties: {
    // host.json: the Functions host renews the lock for up to 15 minutes, past functionTimeout
    lockDuration: 'PT5M'
    maxDeliveryCount: 10
    deadLetteringOnMessageExpiration: true
    defaultMessageTimeToLive: 'P7D'
  }
}

// -- monitoring: ingestion by identity only --------------------------------------------------

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-${token}'
  location: location
  tags: tags
  properties: {
    sku: { name: 'PerGB2018' }
    retentionInDays: 30
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-${token}'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logs.id
    DisableLocalAuth: true
  }
}

// -- Event Grid: the blob-trigger webhook subscribes in the postdeploy hook ------------------

resource systemTopic 'Microsoft.EventGrid/systemTopics@2024-06-01-preview' = {
  name: 'evgt-${token}'
  location: location
  tags: tags
  properties: {
    source: storage.id
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

// -- the function app ------------------------------------------------------------------------

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: 'plan-${token}'
  location: location
  tags: tags
  kind: 'functionapp'
  sku: { name: 'FC1', tier: 'FlexConsumption' }
  properties: { reserved: true }
}

var blobUri = 'https://${storage.name}.blob.${environment().suffixes.storage}'
var queueUri = 'https://${storage.name}.queue.${environment().suffixes.storage}'
var tableUri = 'https://${storage.name}.table.${environment().suffixes.storage}'

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: 'func-${token}'
  location: location
  tags: union(tags, { 'azd-service-name': 'api' })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${functionIdentity.id}': {} }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${blobUri}/${deploymentContainer}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: functionIdentity.id
          }
        }
      }
      scaleAndConcurrency: { maximumInstanceCount: 40, instanceMemoryMB: 2048 }
      runtime: { name: 'python', version: '3.12' }
    }
    siteConfig: {
      minTlsVersion: '1.2'
      appSettings: [
        { name: 'AzureWebJobsStorage__credential', value: 'managedidentity' }
        { name: 'AzureWebJobsStorage__clientId', value: functionIdentity.properties.clientId }
        { name: 'AzureWebJobsStorage__blobServiceUri', value: blobUri }
        { name: 'AzureWebJobsStorage__queueServiceUri', value: queueUri }
        { name: 'AzureWebJobsStorage__tableServiceUri', value: tableUri }
        { name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: appInsights.properties.ConnectionString }
        { name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING', value: 'ClientId=${functionIdentity.properties.clientId};Authorization=AAD' }
        // the bucket, the job table and the trigger connection (ephemerid.azure.connection)
        { name: 'EPHEMERID_STORAGE__credential', value: 'managedidentity' }
        { name: 'EPHEMERID_STORAGE__clientId', value: functionIdentity.properties.clientId }
        { name: 'EPHEMERID_STORAGE__accountName', value: storage.name }
        { name: 'EPHEMERID_STORAGE__blobServiceUri', value: blobUri }
        { name: 'EPHEMERID_STORAGE__queueServiceUri', value: queueUri }
        { name: 'EPHEMERID_STORAGE__tableServiceUri', value: tableUri }
        { name: 'EPHEMERID_SERVICEBUS__credential', value: 'managedidentity' }
        { name: 'EPHEMERID_SERVICEBUS__clientId', value: functionIdentity.properties.clientId }
        { name: 'EPHEMERID_SERVICEBUS__fullyQualifiedNamespace', value: '${serviceBus.name}.servicebus.windows.net' }
        { name: 'EPHEMERID_STORE', value: 'table://${jobsTable}' }
        { name: 'EPHEMERID_ARTIFACTS', value: 'az://' }
        { name: 'EPHEMERID_HOME', value: '/tmp/ephemerid' }
        { name: 'EPHEMERID_BACKEND', value: 'azure-vm' }
        { name: 'EPHEMERID_INCOMING_CONTAINER', value: incomingContainer }
        { name: 'EPHEMERID_RUNS_CONTAINER', value: runsContainer }
        { name: 'EPHEMERID_JOBS_QUEUE', value: jobsQueue }
        // the azure-vm backend (docs/azure-vm.md)
        { name: 'EPHEMERID_AZURE_SUBSCRIPTION_ID', value: subscription().subscriptionId }
        { name: 'EPHEMERID_COMPUTE_RESOURCE_GROUP', value: computeResourceGroup }
        { name: 'EPHEMERID_COMPUTE_SUBNET_ID', value: computeSubnetId }
        { name: 'EPHEMERID_COMPUTE_REGIONS', value: computeRegions }
        { name: 'EPHEMERID_VM_IDENTITY_ID', value: vmIdentity.id }
        { name: 'EPHEMERID_VM_IDENTITY_CLIENT_ID', value: vmIdentity.properties.clientId }
        { name: 'EPHEMERID_VM_REGISTRY', value: vmRegistry }
        // the prediction service's revisions and weights (docs/serving-azure.md)
        { name: 'EPHEMERID_SERVING_APP_ID', value: servingAppId }
        { name: 'EPHEMERID_SERVING_FOLLOW', value: servingFollow }
        // the azure-ml backend (docs/azure-ml.md): the cluster's nodes run as the VMs' identity;
        // no EPHEMERID_AML_ENVIRONMENT: the app registers its runner environment by content
        { name: 'EPHEMERID_AML_RESOURCE_GROUP', value: empty(amlWorkspace) ? '' : resourceGroup().name }
        { name: 'EPHEMERID_AML_WORKSPACE', value: amlWorkspace }
        { name: 'EPHEMERID_AML_CLUSTER', value: amlCluster }
        { name: 'EPHEMERID_AML_IDENTITY_CLIENT_ID', value: vmIdentity.properties.clientId }
        { name: 'EPHEMERID_AML_SKU', value: amlClusterSku }
        { name: 'EPHEMERID_AML_IDLE_S', value: string(amlIdleSeconds) }
        { name: 'EPHEMERID_AML_LOW_PRIORITY', value: string(amlLowPriority) }
        { name: 'EPHEMERID_AML_DATASTORE', value: 'ephemerid_runs' }
      ]
    }
  }
}

// -- roles: the function identity -------------------------------------------------------------

var functionStorageRoles = [
  roles.storageBlobDataOwner
  roles.storageQueueDataContributor
  roles.storageTableDataContributor
]

resource functionStorage 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for role in functionStorageRoles: {
  name: guid(storage.id, functionIdentity.id, role)
  scope: storage
  properties: {
    principalId: functionIdentity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
  }
}]

resource functionServiceBus 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for role in [ roles.serviceBusDataReceiver, roles.serviceBusDataSender ]: {
  name: guid(serviceBus.id, functionIdentity.id, role)
  scope: serviceBus
  properties: {
    principalId: functionIdentity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
  }
}]

resource functionMetrics 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, functionIdentity.id, roles.monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    principalId: functionIdentity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
  }
}

// assigning the VMs' identity to a VM
resource functionAssignsVmIdentity 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vmIdentity.id, functionIdentity.id, roles.managedIdentityOperator)
  scope: vmIdentity
  properties: {
    principalId: functionIdentity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.managedIdentityOperator)
  }
}

// -- roles: the VMs' identity, on the job containers only --------------------------------------

resource jobContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = [for name in jobContainers: {
  parent: blobService
  name: name
}]

resource vmContainers 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (name, i) in jobContainers: {
  name: guid(storage.id, vmIdentity.id, name, roles.storageBlobDataContributor)
  scope: jobContainer[i]
  properties: {
    principalId: vmIdentity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
  }
  dependsOn: [ containers ]
}]

output functionAppName string = functionApp.name
output storageAccountName string = storage.name
output systemTopicName string = systemTopic.name
output serviceBusNamespace string = serviceBus.name
output appInsightsId string = appInsights.id
output logsWorkspaceId string = logs.id
