//go:build tools

package tools

import _ "github.com/argoproj/argo-workflows/v3/cmd/workflow-controller"
