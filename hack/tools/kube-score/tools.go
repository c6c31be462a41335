//go:build tools

// Package tools pins kube-score, which tests/charts runs on the rendered chart (hack/tools/build.sh).
package tools

import _ "github.com/zegl/kube-score/cmd/kube-score"
