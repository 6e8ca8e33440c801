module github.com/meshlet/meshlet/test/tools/kube-router

go 1.24

require github.com/cloudnativelabs/kube-router/v2 v2.1.0
