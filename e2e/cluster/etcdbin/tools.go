//go:build tools

// Package etcdbin pins the etcd server that the local e2e cluster runs.
// `go install ...@v3.6.16` is refused because etcd's go.mod has replace
// directives, so the server is built through this wrapper module instead.
package etcdbin

import (
	_ "go.etcd.io/etcd/server/v3"
)
