// Pins the OCI registry used by the tests (a local plain-HTTP registry for image and chart pushes).
// Built by build.sh from the official github.com/google/go-containerregistry module (cmd/registry);
// not part of the webhook.
module wi-webhook.local/hack/registry

go 1.26.0

tool github.com/google/go-containerregistry/cmd/registry

require github.com/google/go-containerregistry v0.22.1 // indirect
