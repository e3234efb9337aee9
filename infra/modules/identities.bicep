// Two user-assigned identities: one for the function app, one for job VMs (and Azure ML
// nodes). They hold different rights: the VMs' can only read and write the job containers, and
// delete a job VM (a VM past its deadline deletes itself; compute.bicep).
param location string
param tags object
param token string

resource functionIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-func-${token}'
  location: location
  tags: tags
}

resource vmIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-jobs-${token}'
  location: location
  tags: tags
}

output functionIdentityName string = functionIdentity.name
output functionPrincipalId string = functionIdentity.properties.principalId
output vmIdentityName string = vmIdentity.name
output vmPrincipalId string = vmIdentity.properties.principalId
