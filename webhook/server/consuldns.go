package server

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/meshlet/meshlet/kubeclient"
)

// consulDNSRefresh is how often the Consul DNS Service is read again. A
// ClusterIP lives as long as its Service, so this only matters when the
// Service is created late or recreated (a new address): pods admitted in
// between are denied, or get the old address.
const consulDNSRefresh = 30 * time.Second

// consulDNS keeps the address of the Service in front of the Consul
// agents' DNS (the official chart's <release>-dns) for the admissions: a
// pod whose DNS goes to Consul gets its ClusterIP in the redirect config.
// Read in the background, so no admission waits on the API server.
type consulDNS struct {
	services  kubeclient.Resource[*corev1.Service, *corev1.ServiceList]
	namespace string
	name      string
	log       *slog.Logger
	// quiet logs the Service's absence at info rather than warn: no pod's
	// DNS goes there by default, and many clusters have no Consul DNS.
	quiet bool
	// known is 1 while the Service's address is known, for an alert on
	// the pods that are denied meanwhile.
	known prometheus.Gauge

	mu  sync.RWMutex
	ip  string // "" until known
	why string // why ip is "", in a denial's words
}

// parseServiceRef reads "namespace/name".
func parseServiceRef(ref string) (namespace, name string, err error) {
	namespace, name, ok := strings.Cut(ref, "/")
	if !ok || len(validation.IsDNS1123Label(namespace)) > 0 || len(validation.IsDNS1035Label(name)) > 0 {
		return "", "", fmt.Errorf("%q: expected namespace/name of a Service, such as consul/consul-dns", ref)
	}
	return namespace, name, nil
}

func newConsulDNS(client kubeclient.Interface, ref string, quiet bool, log *slog.Logger) (*consulDNS, error) {
	ns, name, err := parseServiceRef(ref)
	if err != nil {
		return nil, err
	}
	known := prometheus.NewGauge(prometheus.GaugeOpts{Name: "meshlet_webhook_consul_dns_known",
		Help:        "1 while the Consul DNS Service's ClusterIP is known; 0 while pods whose DNS would go there are denied.",
		ConstLabels: prometheus.Labels{"service": ref}})
	return &consulDNS{services: client.Services(ns), namespace: ns, name: name, log: log, quiet: quiet, known: known,
		why: fmt.Sprintf("Service %s/%s has not been read yet", ns, name)}, nil
}

// Current is Consul DNS's address, or "" and why there is none.
func (d *consulDNS) Current() (ip, why string) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.ip, d.why
}

// refresh reads the Service once. A read that fails for another reason
// than the Service's absence keeps an address already known: the
// Service's ClusterIP cannot have changed without it being deleted.
func (d *consulDNS) refresh(ctx context.Context) {
	ref := d.namespace + "/" + d.name
	svc, err := d.services.Get(ctx, d.name, metav1.GetOptions{})
	var ip, why string
	switch {
	case apierrors.IsNotFound(err):
		why = fmt.Sprintf("Service %s, in front of the Consul agents' DNS, does not exist (the official Consul chart creates it with dns.enabled; "+
			"meshlet's chart names it in consul.dns.service, or gives its address in dns.clusterIP)", ref)
	case err != nil:
		d.mu.Lock()
		known := d.ip != ""
		if !known {
			d.why = fmt.Sprintf("Service %s could not be read: %v", ref, err)
		}
		d.mu.Unlock()
		d.log.Warn("read the Consul DNS Service", "service", ref, "err", err, "keeping_address", known)
		return
	default:
		ip, why = serviceDNSAddress(svc)
	}
	d.mu.Lock()
	changed := d.ip != ip || (ip == "" && d.why != why)
	d.ip, d.why = ip, why
	d.mu.Unlock()
	if ip != "" {
		d.known.Set(1)
	} else {
		d.known.Set(0)
	}
	if changed {
		if ip != "" {
			d.log.Info("Consul DNS", "service", ref, "address", ip)
		} else {
			level := slog.LevelWarn
			if d.quiet {
				level = slog.LevelInfo
			}
			d.log.Log(ctx, level, "Consul DNS unavailable: pods whose DNS would go there are denied", "service", ref, "why", why)
		}
	}
}

// serviceDNSAddress is the ClusterIP of a Service that answers DNS on
// port 53 over UDP (and so over TCP too, through the same rules), or why
// it cannot be used.
func serviceDNSAddress(svc *corev1.Service) (ip, why string) {
	ref := svc.Namespace + "/" + svc.Name
	cip := svc.Spec.ClusterIP
	if cip == "" || cip == corev1.ClusterIPNone {
		return "", fmt.Sprintf("Service %s is headless: pods' DNS needs one address, its ClusterIP", ref)
	}
	if a, err := netip.ParseAddr(cip); err != nil || a.Zone() != "" {
		return "", fmt.Sprintf("Service %s has ClusterIP %q, not an IP address", ref, cip)
	}
	for _, p := range svc.Spec.Ports {
		if p.Port == 53 && p.Protocol == corev1.ProtocolUDP {
			return cip, ""
		}
	}
	return "", fmt.Sprintf("Service %s has no port 53/UDP, where pods send their DNS", ref)
}

// Run reads the Service until ctx ends.
func (d *consulDNS) Run(ctx context.Context) {
	t := time.NewTicker(consulDNSRefresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d.refresh(ctx)
		}
	}
}
