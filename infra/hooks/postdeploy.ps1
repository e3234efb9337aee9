# azd postdeploy (Windows): subscribe the blob-trigger webhook to the storage account's
# BlobCreated events; the same steps as postdeploy.sh. Safe to run again. Prints no key.
$ErrorActionPreference = 'Stop'

foreach ($name in 'AZURE_RESOURCE_GROUP', 'AZURE_FUNCTION_APP_NAME', 'AZURE_EVENTGRID_TOPIC_NAME') {
    if (-not [Environment]::GetEnvironmentVariable($name)) { throw "$name is not set: run through azd" }
}
$group = $env:AZURE_RESOURCE_GROUP
$app = $env:AZURE_FUNCTION_APP_NAME

$hostName = az functionapp show --resource-group $group --name $app --query defaultHostName --output tsv
$key = az functionapp keys list --resource-group $group --name $app --query systemKeys.blobs_extension --output tsv
if (-not $key) {
    throw "the blobs_extension key is not there yet; run 'azd hooks run postdeploy' again in a minute"
}

function Subscribe([string]$Name, [string]$Function, [string]$Prefix, [string]$Suffix) {
    Write-Host "postdeploy: Event Grid subscription $Name -> $Function"
    $suffix = if ($Suffix) { @('--subject-ends-with', $Suffix) } else { @() }
    az eventgrid system-topic event-subscription create `
        --resource-group $group `
        --system-topic-name $env:AZURE_EVENTGRID_TOPIC_NAME `
        --name $Name `
        --endpoint-type webhook `
        --endpoint "https://$hostName/runtime/webhooks/blobs?functionName=Host.Functions.$Function&code=$key" `
        --included-event-types Microsoft.Storage.BlobCreated `
        --subject-begins-with $Prefix `
        @suffix `
        --max-delivery-attempts 30 `
        --event-ttl 1440 `
        --output none
    if ($LASTEXITCODE -ne 0) { throw "creating Event Grid subscription $Name failed" }
}

Subscribe 'incoming' 'on_blob_created' '/blobServices/default/containers/incoming/' ''
Subscribe 'run-results' 'on_run_result' '/blobServices/default/containers/runs/' '/result.json'
