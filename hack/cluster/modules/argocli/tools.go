//go:build tools

// Package tools pins the argo CLI, which is also argo-server with the UI embedded, at the same
// version as the workflow-controller of ../argo. A module of its own, like ../argoexec: the CLI
// and server import packages the controller does not, and adding them to ../argo's go.sum would
// change that build's cache key.
package tools

import _ "github.com/argoproj/argo-workflows/v3/cmd/argo"
