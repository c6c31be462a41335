//go:build tools

// Package tools pins argoexec, Argo's executor (init/wait/emissary), at the same version as the
// workflow-controller of ../argo. A module of its own: argoexec imports artifact drivers the
// controller does not, and adding them to ../argo's go.sum would change that build's cache key.
package tools

import _ "github.com/argoproj/argo-workflows/v3/cmd/argoexec"
