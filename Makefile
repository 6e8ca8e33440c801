# meshlet — see README.md. Every target installs what it needs itself.
SHELL := /bin/bash
export CGO_ENABLED := 0
GO ?= go
BIN := $(CURDIR)/bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
CNI_PLUGINS := $(addprefix github.com/containernetworking/plugins/plugins/,main/bridge ipam/host-local main/loopback meta/portmap)

.PHONY: all tools build images cluster-up cluster-down cluster-status kind-up kind-down kind-image demo test unit e2e bench lint clean

all: build

## tools: Debian packages and pinned Go tools (kubernetes, consul, coredns, helm, http-echo, staticcheck) into bin/
tools:
	@./hack/tools.sh

## build: meshlet's binaries and the test images' binaries into bin/
build:
	@mkdir -p $(BIN)
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...
	$(GO) build -trimpath -ldflags '-s -w' -o $(BIN)/ ./test/images/pause ./test/images/curl ./test/e2e/cmd/localcluster ./test/e2e/cmd/kindcluster
	@mkdir -p $(BIN)/cni
	$(GO) build -trimpath -ldflags '-s -w' -o $(BIN)/cni/ $(CNI_PLUGINS)

## images: meshlet's image, with Docker (deploy/image/Dockerfile); the local cluster builds its own without Docker
IMAGE ?= meshlet:$(VERSION)
images:
	@docker info >/dev/null 2>&1 || { echo "make images: needs a running Docker engine ('docker info' failed). make cluster-up builds the local cluster's images without one." >&2; exit 1; }
	docker build -f deploy/image/Dockerfile --build-arg VERSION=$(VERSION) -t $(IMAGE) .

## cluster-up: boot the local single-node cluster with Consul (writes .cluster/env); SECURE=1: Consul with ACLs and TLS
cluster-up: tools build
	@SECURE=$(SECURE) $(BIN)/localcluster up

## cluster-down: stop it and restore the host
cluster-down:
	@if [ -x $(BIN)/localcluster ]; then $(BIN)/localcluster down; \
	else $(GO) run ./test/e2e/cmd/localcluster down; fi

## kind-image: the offline kind node image (test/e2e/kind/nodeimage; needs Docker), cached by content
kind-image: tools build
	@./hack/tools.sh kind_node
	@$(BIN)/kindcluster image

## kind-up: a kind cluster on that image: 1 control plane, 2 workers, kube-router, Consul (a client agent per node) and meshlet by helm (writes .kind/env); SECURE=1: Consul with ACLs and TLS
kind-up: tools build
	@./hack/tools.sh kind_node
	@SECURE=$(SECURE) $(BIN)/kindcluster up

## kind-down: delete it, its Docker network and .kind
kind-down:
	@if [ -x $(BIN)/kindcluster ]; then $(BIN)/kindcluster down; \
	else $(GO) run ./test/e2e/cmd/kindcluster down; fi

## demo: boot the cluster and show it working (SECURE=1: on Consul with ACLs and TLS)
demo: cluster-up
	@./hack/demo.sh

## test: everything, including the real-cluster e2e suite
test: tools build
	@./hack/test.sh

## bench: the benchmarks of docs/benchmarks.md (boots the local cluster)
bench: tools build
	@./hack/bench.sh

clean: cluster-down
	rm -rf $(BIN) .cluster

## cluster-status: the cluster's processes and their memory
cluster-status:
	@$(BIN)/localcluster status
