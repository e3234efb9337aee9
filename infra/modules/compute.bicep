// The job VMs' resource group: a VNet whose subnet takes no inbound traffic, the function
// identity's rights to make and delete VMs and join their NICs, and the VMs' own right to delete
// a VM (their deadline), here and nowhere else.
// VMs get no public IP (the backend never asks for one); they reach Storage and the package
// index outbound, through the NAT gateway.
param location string
param tags object
param functionPrincipalId string
param vmPrincipalId string

@description('Give the subnet outbound internet through a NAT gateway (about 32 USD a month idle). Off: VMs reach Storage by service endpoint only, so the image must carry the runner.')
param natGateway bool = true

var roles = loadJsonContent('../roles.json')

resource nsg 'Microsoft.Network/networkSecurityGroups@2024-05-01' = {
  name: 'nsg-jobs'
  location: location
  tags: tags
  properties: {
    securityRules: [
      {
        name: 'deny-all-inbound'
        properties: {
          priority: 4096
          direction: 'Inbound'
          access: 'Deny'
          protocol: '*'
          sourceAddressPrefix: '*'
          sourcePortRange: '*'
          destinationAddressPrefix: '*'
          destinationPortRange: '*'
        }
      }
    ]
  }
}

// Outbound only: new subnets have no default outbound access, so VMs leave through NAT.
resource natIp 'Microsoft.Network/publicIPAddresses@2024-05-01' = if (natGateway) {
  name: 'pip-nat-jobs'
  location: location
  tags: tags
  sku: { name: 'Standard' }
  properties: { publicIPAllocationMethod: 'Static' }
}

resource nat 'Microsoft.Network/natGateways@2024-05-01' = if (natGateway) {
  name: 'nat-jobs'
  location: location
  tags: tags
  sku: { name: 'Standard' }
  properties: { publicIpAddresses: [ { id: natIp.id } ] }
}

resource vnet 'Microsoft.Network/virtualNetworks@2024-05-01' = {
  name: 'vnet-jobs'
  location: location
  tags: tags
  properties: {
    addressSpace: { addressPrefixes: [ '10.60.0.0/16' ] }
    subnets: [
      {
        name: 'jobs'
        properties: {
          addressPrefix: '10.60.0.0/20'
          networkSecurityGroup: { id: nsg.id }
          natGateway: natGateway ? { id: nat.id } : null
          defaultOutboundAccess: false
          serviceEndpoints: [ { service: 'Microsoft.Storage' } ]
        }
      }
    ]
  }
}

resource vmContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(resourceGroup().id, functionPrincipalId, roles.virtualMachineContributor)
  properties: {
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.virtualMachineContributor)
  }
}

resource networkContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(resourceGroup().id, functionPrincipalId, roles.networkContributor)
  properties: {
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.networkContributor)
  }
}

// A job VM past its deadline deletes itself through ARM with its identity (src/ephemerid/imds.py):
// that identity may delete a VM of this group (and the NIC and disk the delete takes with it),
// nothing else. One identity serves every job VM, so a job's code could delete another job's VM
// here (never read it): docs/azure-vm.md weighs that.
resource vmSelfDeleteRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(resourceGroup().id, 'ephemerid-vm-self-delete')
  properties: {
    roleName: 'ephemerid job VM self-delete (${resourceGroup().name})'
    description: 'Lets ephemerid job VMs delete themselves at their deadline.'
    type: 'CustomRole'
    permissions: [
      {
        actions: [
          'Microsoft.Compute/virtualMachines/delete'
          'Microsoft.Network/networkInterfaces/delete'
          'Microsoft.Compute/disks/delete'
        ]
        notActions: []
      }
    ]
    assignableScopes: [ resourceGroup().id ]
  }
}

resource vmSelfDelete 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(resourceGroup().id, vmPrincipalId, vmSelfDeleteRole.id)
  properties: {
    principalId: vmPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: vmSelfDeleteRole.id
  }
}

output subnetId string = vnet.properties.subnets[0].id
output vnetId string = vnet.id
