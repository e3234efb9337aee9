// The real-time prediction service (optional: enableServing): `python -m ephemerid.serving` as an
// Azure Container App on a serverless GPU workload profile that scales to zero, with blue/green by
// revision (activeRevisionsMode Multiple: ephemerid.azure.container_app sets the weights). Its own
// identity pulls the image from the project's registry (AcrPull on that registry only), reads the
// model registry (Storage Blob Data Reader on the models container only) and reads its callers'
// keys from Key Vault (Key Vault Secrets User on that one secret): no password or key is in the
// app's settings. Logs go to the project's Log Analytics workspace through Azure Monitor (no
// workspace key). tests/test_deploy_serving.py checks this against ServingSettings.
param location string
param tags object
param token string
@description('The container app name (main.bicep derives the app id the function app is told from it).')
@minLength(1)
param appName string
@description('The function app identity: it sets revisions and traffic weights (POST /api/serving/deploy).')
param functionPrincipalId string
@description('Login server of the project registry the image is pulled from (enableRegistry).')
@minLength(5)
param registryServer string
@minLength(5)
param registryName string
@description('The image of the prediction service (built from the model environment, pushed to the registry).')
@minLength(1)
param image string
@description('The model the first revision serves: name@alias (follows the alias) or name:version.')
@minLength(1)
param model string
@description('The callers keys, name=key,name=key: stored in Key Vault, never in an app setting.')
@secure()
@minLength(1)
param keys string
param storageAccountName string
param logsWorkspaceId string
@description('The serverless GPU profile type (Consumption-GPU-NC8as-T4 or Consumption-GPU-NC24-A100).')
param gpuProfileType string = 'Consumption-GPU-NC8as-T4'
param cpu string = '8'
param memory string = '56Gi'
param maxReplicas int = 1
@description('Concurrent requests one replica takes before the HTTP scale rule adds another.')
param concurrentRequests int = 64

var roles = loadJsonContent('../roles.json')
var modelsContainer = 'models'
var port = 8080
var keysSecretName = 'serving-keys'
var gpuProfileName = 'gpu'

resource servingIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-serve-${token}'
  location: location
  tags: tags
}

// -- what the identity may touch: one registry, one container, one secret -----------------------

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' existing = {
  name: registryName
}

resource servingPull 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(registry.id, servingIdentity.id, roles.acrPull)
  scope: registry
  properties: {
    principalId: servingIdentity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.acrPull)
  }
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: storage
  name: 'default'
}

resource models 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: modelsContainer
}

resource servingModels 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(models.id, servingIdentity.id, roles.storageBlobDataReader)
  scope: models
  properties: {
    principalId: servingIdentity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataReader)
  }
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: 'kvs-${token}' // not kv-: the Azure ML workspace's vault is named so
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: { family: 'A', name: 'standard' }
    enableRbacAuthorization: true
    enableSoftDelete: true
    publicNetworkAccess: 'Enabled'
  }
}

resource keysSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: keysSecretName
  properties: { value: keys, contentType: 'name=key,name=key' }
}

resource servingKeys 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(keysSecret.id, servingIdentity.id, roles.keyVaultSecretsUser)
  scope: keysSecret
  properties: {
    principalId: servingIdentity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
  }
}

// -- the environment: Consumption plus a serverless GPU profile, logs through Azure Monitor -----

resource managedEnvironment 'Microsoft.App/managedEnvironments@2025-01-01' = {
  name: 'cae-${token}'
  location: location
  tags: tags
  properties: {
    appLogsConfiguration: { destination: 'azure-monitor' }
    workloadProfiles: [
      { name: 'Consumption', workloadProfileType: 'Consumption' }
      { name: gpuProfileName, workloadProfileType: gpuProfileType }
    ]
  }
}

resource environmentLogs 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'logs'
  scope: managedEnvironment
  properties: {
    workspaceId: logsWorkspaceId
    logs: [ { categoryGroup: 'allLogs', enabled: true } ]
  }
}

// -- the prediction service -----------------------------------------------------------------------

var blobUri = 'https://${storage.name}.blob.${environment().suffixes.storage}'
var health = { path: '/healthz', port: port, scheme: 'HTTP' }

resource app 'Microsoft.App/containerApps@2025-01-01' = {
  name: appName
  location: location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${servingIdentity.id}': {} }
  }
  properties: {
    environmentId: managedEnvironment.id
    workloadProfileName: gpuProfileName
    configuration: {
      activeRevisionsMode: 'Multiple'
      maxInactiveRevisions: 20
      ingress: {
        external: true
        allowInsecure: false
        targetPort: port
        transport: 'http'
        traffic: [ { latestRevision: true, weight: 100 } ]
      }
      registries: [ { server: registryServer, identity: servingIdentity.id } ]
      secrets: [
        { name: keysSecretName, keyVaultUrl: keysSecret.properties.secretUri, identity: servingIdentity.id }
      ]
    }
    template: {
      containers: [
        {
          name: 'serving'
          image: image
          command: [ 'python', '-m', 'ephemerid.serving' ]
          resources: { cpu: json(cpu), memory: memory }
          env: [
            { name: 'EPHEMERID_SERVING_MODEL', value: model }
            { name: 'EPHEMERID_SERVING_SPLIT', value: '' }
            { name: 'EPHEMERID_SERVING_KEYS', secretRef: keysSecretName }
            { name: 'EPHEMERID_SERVING_PORT', value: string(port) }
            { name: 'EPHEMERID_SERVING_HOST', value: '0.0.0.0' }
            { name: 'EPHEMERID_SERVING_MAX_BATCH_ROWS', value: '4096' }
            { name: 'EPHEMERID_SERVING_MAX_WAIT_MS', value: '2' }
            { name: 'EPHEMERID_SERVING_MAX_BODY_BYTES', value: string(8 * 1024 * 1024) }
            { name: 'EPHEMERID_SERVING_MAX_ROWS', value: '10000' }
            { name: 'EPHEMERID_SERVING_RATE_PER_S', value: '1000' }
            { name: 'EPHEMERID_SERVING_BURST', value: '2000' }
            { name: 'EPHEMERID_SERVING_IDLE_EXIT_S', value: '0' }
            { name: 'EPHEMERID_SERVING_POLL_S', value: '10' }
            { name: 'EPHEMERID_SERVING_PIN', value: 'false' }
            { name: 'EPHEMERID_ARTIFACTS', value: 'az://' }
            { name: 'EPHEMERID_HOME', value: '/tmp/ephemerid' }
            { name: 'EPHEMERID_STORAGE__credential', value: 'managedidentity' }
            { name: 'EPHEMERID_STORAGE__clientId', value: servingIdentity.properties.clientId }
            { name: 'EPHEMERID_STORAGE__accountName', value: storage.name }
            { name: 'EPHEMERID_STORAGE__blobServiceUri', value: blobUri }
          ]
          probes: [
            { type: 'Startup', httpGet: health, periodSeconds: 30, failureThreshold: 10 }
            { type: 'Readiness', httpGet: health, periodSeconds: 10 }
            { type: 'Liveness', httpGet: health, periodSeconds: 30 }
          ]
        }
      ]
      scale: {
        minReplicas: 0
        maxReplicas: maxReplicas
        rules: [
          { name: 'http', http: { metadata: { concurrentRequests: string(concurrentRequests) } } }
        ]
      }
    }
  }
  dependsOn: [ servingPull, servingModels, servingKeys ]
}

// the function app (ephemerid.azure.container_app) sets revisions and weights on this app alone
resource functionDeploys 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(app.id, functionPrincipalId, roles.contributor)
  scope: app
  properties: {
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.contributor)
  }
}

output appId string = app.id
output appName string = app.name
output url string = 'https://${app.properties.configuration.ingress.fqdn}'
output identityPrincipalId string = servingIdentity.properties.principalId
