module github.com/meshlet/meshlet/test/tools/http-echo

go 1.24

require github.com/hashicorp/http-echo v1.0.0
