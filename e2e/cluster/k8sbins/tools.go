//go:build tools

// Package k8sbins pins the Kubernetes control-plane commands that the local
// e2e cluster runs, so that `go mod tidy` records every module they need in
// go.sum. Built by e2e/cluster/cluster.py; never imported.
package k8sbins

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
