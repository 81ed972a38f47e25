// Subscription diagnostic setting: exports the Administrative category of
// the Activity Log (create/update/delete/action operations, which include
// VM extension writes) to an event hub. Subscription diagnostic settings
// take no retention or metrics, only log categories.

targetScope = 'subscription'

@description('Name of the diagnostic setting.')
param diagnosticSettingName string

@description('Resource id of the Event Hubs namespace authorization rule (Manage, Send, Listen) Azure Monitor writes through.')
param eventHubAuthorizationRuleId string

@description('Event hub that receives the records.')
param eventHubName string

resource activityLogToEventHub 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: diagnosticSettingName
  properties: {
    eventHubAuthorizationRuleId: eventHubAuthorizationRuleId
    eventHubName: eventHubName
    logs: [
      {
        category: 'Administrative'
        enabled: true
      }
    ]
  }
}

@description('Resource id of the diagnostic setting.')
output diagnosticSettingId string = activityLogToEventHub.id
