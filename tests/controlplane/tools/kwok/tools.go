//go:build tools

// Package tools records the kwok command the operator tests build.
package tools

import _ "sigs.k8s.io/kwok/cmd/kwok"
