//go:build tools

// Package tools pins Kueue's controller manager (cmd/kueue), which kueue-up.sh runs beside the
// local cluster. A module of its own: Kueue brings its own Kubernetes libraries (v0.35), and
// adding them to ../k8s would change the control plane's build and its cache key.
package tools

import _ "sigs.k8s.io/kueue/cmd/kueue"
