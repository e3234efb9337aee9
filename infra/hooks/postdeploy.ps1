# azd postdeploy (Windows): subscribe the blob-trigger webhook to the storage account's
# BlobCreated events; the same steps as postdeploy.sh. Safe to run again. Prints no key.
$ErrorActionPreference = 'Stop'

foreach ($name in 'AZURE_RESOURCE_GROUP', 'AZURE_FUNCTION_APP_NAME', 'AZURE_EVENTGRID_TOPIC_NAME') {
    if (-not [Environment]::GetEnvironmentVariable($name)) { throw "$name is not set: run through azd" }
}
$group = $env:AZURE_RESOURCE_GROUP
$app = $env:AZURE_FUNCTION_APP_NAME

$hostName = az functionapp show --resource-group $group --name $app --query defaultHostName --output tsv
# The blobs_extension system key exists only once the host has started and loaded the blob
# extension, which on a first deployment can take a few minutes: wait for it, within a bound.
$tries = if ($env:POSTDEPLOY_KEY_TRIES) { [int]$env:POSTDEPLOY_KEY_TRIES } else { 40 }
$waitSeconds = if ($env:POSTDEPLOY_KEY_WAIT_S) { [int]$env:POSTDEPLOY_KEY_WAIT_S } else { 15 }
$key = ''
for ($attempt = 1; ; $attempt++) {
    $key = az functionapp keys list --resource-group $group --name $app --query systemKeys.blobs_extension --output tsv
    if ($key) { break }
    if ($attempt -ge $tries) {
        throw "the function app has no blobs_extension key after $tries tries; check that it started (its log stream), then run 'azd hooks run postdeploy'"
    }
    Write-Host "postdeploy: waiting for the function host to load its blob extension (try $attempt of $tries)"
    Start-Sleep -Seconds $waitSeconds
}

function Subscribe([string]$Name, [string]$Function, [string]$Prefix, [string]$Suffix) {
    Write-Host "postdeploy: Event Grid subscription $Name -> $Function"
    # (PowerShell names are case-insensitive: no local may be called $suffix here)
    $endsWith = if ($Suffix) { @('--subject-ends-with', $Suffix) } else { @() }
    $endpoint = "https://$hostName/runtime/webhooks/blobs?functionName=Host.Functions.$Function&code=$key"
    # On Windows az is az.cmd, which cmd.exe parses again and splits at '&': quote the URL for it.
    if ($IsWindows -or $PSVersionTable.PSEdition -eq 'Desktop') { $endpoint = '"' + $endpoint + '"' }
    az eventgrid system-topic event-subscription create `
        --resource-group $group `
        --system-topic-name $env:AZURE_EVENTGRID_TOPIC_NAME `
        --name $Name `
        --endpoint-type webhook `
        --endpoint $endpoint `
        --included-event-types Microsoft.Storage.BlobCreated `
        --subject-begins-with $Prefix `
        @endsWith `
        --max-delivery-attempts 30 `
        --event-ttl 1440 `
        --output none
    if ($LASTEXITCODE -ne 0) { throw "creating Event Grid subscription $Name failed" }
}

Subscribe 'incoming' 'on_blob_created' '/blobServices/default/containers/incoming/' ''
Subscribe 'run-results' 'on_run_result' '/blobServices/default/containers/runs/' '/result.json'
