#!/bin/sh
# The two messages of an upstream service with the `nats` CLI (github.com/nats-io/natscli): ask before
# the provider call, record after it. The bodies are llm_request.json and llm_completed.json beside this
# script, with REQUEST_ID replaced; docs/asyncapi.yaml describes every field.
#
#   NATS_URL=nats://127.0.0.1:4222 NATS_NKEY_SEED_FILE=.run/nats-identities/upstream.nk sh examples/nats_cli.sh
set -eu
here=$(dirname "$0")
id=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
nats_() { nats -s "${NATS_URL:-nats://127.0.0.1:4222}" ${NATS_NKEY_SEED_FILE:+--nkey "$NATS_NKEY_SEED_FILE"} \
  --inbox-prefix _INBOX_upstream "$@"; }

# 1. Ask: the reply is the limiter's decision; "allowed": false means do not call the provider.
nats_ req llm.request "$(sed "s/REQUEST_ID/$id/" "$here/llm_request.json")"

# 2. Call your provider here.

# 3. Record: a request to a JetStream subject is answered with the stream's acknowledgement. Without
#    one, send the same message again (the Nats-Msg-Id makes a repeat harmless).
nats_ req llm.completed "$(sed "s/REQUEST_ID/$id/g" "$here/llm_completed.json")" -H "Nats-Msg-Id:$id"
