//go:build tools

// The commands the cluster tests run. The build tag keeps this file out of
// every build; `go mod tidy` still sees the imports and records the modules.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
