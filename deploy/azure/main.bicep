// firstseen on Azure: the Event Hubs side and firstseen's identity.
//
// Deploy into a resource group (az deployment group create, see README.md).
// Creates:
//   - an Event Hubs namespace (Standard), the hub and the consumer group `firstseen`;
//   - the subscription's diagnostic setting that exports the Administrative
//     category of the Activity Log to that hub (module, subscription scope);
//   - a user-assigned managed identity federated with the AKS service account
//     firstseen runs as (workload identity), holding
//     "Azure Event Hubs Data Receiver" on the hub.

targetScope = 'resourceGroup'

@description('Azure region of the Event Hubs namespace and the identity.')
param location string = resourceGroup().location

@description('Event Hubs namespace name (globally unique, 6-50 characters).')
@minLength(6)
@maxLength(50)
param namespaceName string = 'evhns-firstseen-${uniqueString(resourceGroup().id)}'

@description('Event hub that receives the Activity Log.')
param eventHubName string = 'activity-logs'

@description('Partitions of the hub (fixed after creation on Standard). firstseen reads all of them.')
@minValue(1)
@maxValue(32)
param partitionCount int = 4

@description('Retention of the hub, in days (Standard: at most 7). It bounds how long firstseen may be down without losing events.')
@minValue(1)
@maxValue(7)
param retentionDays int = 7

@description('Throughput units of the namespace.')
@minValue(1)
@maxValue(40)
param throughputUnits int = 1

@description('Name of the diagnostic setting created on the subscription.')
param diagnosticSettingName string = 'firstseen-activity-log'

@description('Name of the user-assigned managed identity firstseen runs as.')
param identityName string = 'id-firstseen'

@description('OIDC issuer URL of the AKS cluster: az aks show -g RG -n CLUSTER --query oidcIssuerProfile.issuerUrl -o tsv')
param aksOidcIssuerUrl string

@description('Kubernetes namespace of the firstseen service account (deploy/kubernetes uses `firstseen`).')
param kubernetesNamespace string = 'firstseen'

@description('Kubernetes service account firstseen runs as (deploy/kubernetes uses `firstseen`).')
param kubernetesServiceAccount string = 'firstseen'

@description('Tags applied to every resource.')
param tags object = {
  app: 'firstseen'
}

// Built-in role "Azure Event Hubs Data Receiver".
var eventHubsDataReceiverRoleId = 'a638d3c7-ab3a-418d-83e6-5f17a39d4fde'

resource namespace 'Microsoft.EventHub/namespaces@2024-01-01' = {
  name: namespaceName
  location: location
  tags: tags
  sku: {
    name: 'Standard'
    tier: 'Standard'
    capacity: throughputUnits
  }
  properties: {
    minimumTlsVersion: '1.2'
    // Local (SAS) auth stays enabled only because the subscription
    // diagnostic setting writes through a namespace authorization rule;
    // firstseen itself authenticates with Entra ID (workload identity).
    disableLocalAuth: false
  }
}

resource hub 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' = {
  parent: namespace
  name: eventHubName
  properties: {
    partitionCount: partitionCount
    messageRetentionInDays: retentionDays
  }
}

resource consumerGroup 'Microsoft.EventHub/namespaces/eventhubs/consumergroups@2024-01-01' = {
  parent: hub
  name: 'firstseen'
  properties: {
    userMetadata: 'firstseen New Terms detector'
  }
}

// Azure Monitor streams diagnostic data through a namespace-level rule
// with Manage, Send and Listen rights.
resource diagnosticsRule 'Microsoft.EventHub/namespaces/authorizationRules@2024-01-01' = {
  parent: namespace
  name: 'azure-monitor-diagnostics'
  properties: {
    rights: [
      'Listen'
      'Send'
      'Manage'
    ]
  }
}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: identityName
  location: location
  tags: tags
}

resource federation 'Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials@2023-01-31' = {
  parent: identity
  name: 'aks-${kubernetesNamespace}-${kubernetesServiceAccount}'
  properties: {
    issuer: aksOidcIssuerUrl
    subject: 'system:serviceaccount:${kubernetesNamespace}:${kubernetesServiceAccount}'
    audiences: [
      'api://AzureADTokenExchange'
    ]
  }
}

// Scoped to the hub, not the namespace: firstseen reads one hub only.
resource receiverRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(hub.id, identity.id, eventHubsDataReceiverRoleId)
  scope: hub
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', eventHubsDataReceiverRoleId)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// The Activity Log diagnostic setting is a subscription-scope resource: it
// must be deployed by a module targeting the subscription.
module activityLogExport 'modules/activity-log-export.bicep' = {
  name: 'firstseen-activity-log-export'
  scope: subscription()
  params: {
    diagnosticSettingName: diagnosticSettingName
    eventHubAuthorizationRuleId: diagnosticsRule.id
    eventHubName: hub.name
  }
}

@description('Fully qualified namespace for firstseen.toml `eventhubs.fully_qualified_namespace`.')
output eventHubsNamespaceFqdn string = '${namespace.name}.servicebus.windows.net'

@description('Event hub name for firstseen.toml `eventhubs.event_hub`.')
output eventHubName string = hub.name

@description('Consumer group for firstseen.toml `eventhubs.consumer_group`.')
output consumerGroupName string = consumerGroup.name

@description('Client id for the ServiceAccount annotation azure.workload.identity/client-id.')
output identityClientId string = identity.properties.clientId

@description('Resource id of the subscription diagnostic setting.')
output diagnosticSettingId string = activityLogExport.outputs.diagnosticSettingId
