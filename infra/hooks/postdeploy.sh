#!/bin/sh
# azd postdeploy: subscribe the blob-trigger webhook to the storage account's BlobCreated
# events. The webhook's key exists only once the app is deployed, hence a hook and not Bicep.
# Safe to run again: `create` on an existing subscription updates it in place.
# Reads azd's outputs from the environment; prints no key.
set -eu

: "${AZURE_RESOURCE_GROUP:?run through azd, which sets it}"
: "${AZURE_FUNCTION_APP_NAME:?run through azd, which sets it}"
: "${AZURE_EVENTGRID_TOPIC_NAME:?run through azd, which sets it}"

host=$(az functionapp show --resource-group "$AZURE_RESOURCE_GROUP" \
  --name "$AZURE_FUNCTION_APP_NAME" --query defaultHostName --output tsv)
# The blobs_extension system key exists only once the host has started and loaded the blob
# extension, which on a first deployment can take a few minutes: wait for it, within a bound.
tries=${POSTDEPLOY_KEY_TRIES:-40}
wait_s=${POSTDEPLOY_KEY_WAIT_S:-15}
key=""
attempt=1
while :; do
  key=$(az functionapp keys list --resource-group "$AZURE_RESOURCE_GROUP" \
    --name "$AZURE_FUNCTION_APP_NAME" --query systemKeys.blobs_extension --output tsv || true)
  [ -n "$key" ] && break
  if [ "$attempt" -ge "$tries" ]; then
    echo "postdeploy: the function app has no blobs_extension key after $tries tries; check that it started (its log stream), then run 'azd hooks run postdeploy'" >&2
    exit 1
  fi
  echo "postdeploy: waiting for the function host to load its blob extension (try $attempt of $tries)" >&2
  attempt=$((attempt + 1))
  sleep "$wait_s"
done

subscribe() { # name, function, subject prefix[, subject suffix]
  echo "postdeploy: Event Grid subscription $1 -> $2"
  az eventgrid system-topic event-subscription create \
    --resource-group "$AZURE_RESOURCE_GROUP" \
    --system-topic-name "$AZURE_EVENTGRID_TOPIC_NAME" \
    --name "$1" \
    --endpoint-type webhook \
    --endpoint "https://$host/runtime/webhooks/blobs?functionName=Host.Functions.$2&code=$key" \
    --included-event-types Microsoft.Storage.BlobCreated \
    --subject-begins-with "$3" \
    ${4:+--subject-ends-with "$4"} \
    --max-delivery-attempts 30 \
    --event-ttl 1440 \
    --output none
}

subscribe incoming on_blob_created /blobServices/default/containers/incoming/
subscribe run-results on_run_result /blobServices/default/containers/runs/ /result.json
