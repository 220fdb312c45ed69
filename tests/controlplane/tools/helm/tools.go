//go:build tools

// Package tools records the helm command the operator tests build.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
