package dataplane

import (
	"reflect"
	"strings"
	"testing"
	"time"

	capi "github.com/hashicorp/consul/api"
)

func TestConfigFrom(t *testing.T) {
	proxy := func(mut func(*capi.AgentService)) *capi.AgentService {
		s := &capi.AgentService{Kind: capi.ServiceKindConnectProxy, ID: "shop_web-sidecar-proxy", Port: 20000,
			Proxy: &capi.AgentServiceConnectProxyConfig{DestinationServiceName: "web", LocalServicePort: 8080}}
		if mut != nil {
			mut(s)
		}
		return s
	}
	for _, tc := range []struct {
		name string
		in   *capi.AgentService
		want Config
		err  string
	}{
		{name: "default mode", in: proxy(nil),
			want: Config{ProxyID: "shop_web-sidecar-proxy", Service: ServiceKey{Name: "web"}, Public: ":20000", LocalApp: "127.0.0.1:8080"}},
		{name: "a client with no port: no app behind the public listener", in: proxy(func(s *capi.AgentService) { s.Proxy.LocalServicePort = 0 }),
			want: Config{ProxyID: "shop_web-sidecar-proxy", Service: ServiceKey{Name: "web"}, Public: ":20000"}},
		{name: "transparent, upstreams and expose paths", in: proxy(func(s *capi.AgentService) {
			s.Namespace = "apps"
			s.Proxy.Mode = capi.ProxyModeTransparent
			s.Proxy.Upstreams = []capi.Upstream{{DestinationName: "db", LocalBindPort: 1234},
				{DestinationName: "cache", DestinationNamespace: "infra", LocalBindAddress: "127.0.0.2", LocalBindPort: 6379}}
			s.Proxy.Expose.Paths = []capi.ExposePath{{ListenerPort: 20300, Path: "/ready", LocalPathPort: 8080, Protocol: "http"}}
		}), want: Config{ProxyID: "shop_web-sidecar-proxy", Service: ServiceKey{Namespace: "apps", Name: "web"}, Public: ":20000",
			LocalApp: "127.0.0.1:8080", Outbound: ":15001",
			Upstreams: []Upstream{{Bind: "127.0.0.1:1234", Service: ServiceKey{Namespace: "apps", Name: "db"}},
				{Bind: "127.0.0.2:6379", Service: ServiceKey{Namespace: "infra", Name: "cache"}}},
			Expose: []ExposePath{{Listen: ":20300", Path: "/ready", Local: "127.0.0.1:8080"}}}},
		{name: "not a proxy", in: proxy(func(s *capi.AgentService) { s.Kind = "" }), err: "is not a sidecar proxy"},
		{name: "negative app port", in: proxy(func(s *capi.AgentService) { s.Proxy.LocalServicePort = -1 }), err: "local service port -1, expected 0-65535"},
		{name: "no public port", in: proxy(func(s *capi.AgentService) { s.Port = 0 }), err: "public listener port 0"},
		{name: "prepared query upstream", in: proxy(func(s *capi.AgentService) {
			s.Proxy.Upstreams = []capi.Upstream{{DestinationType: capi.UpstreamDestTypePreparedQuery, DestinationName: "q", LocalBindPort: 1}}
		}), want: Config{ProxyID: "shop_web-sidecar-proxy", Service: ServiceKey{Name: "web"}, Public: ":20000", LocalApp: "127.0.0.1:8080",
			Upstreams: []Upstream{{Bind: "127.0.0.1:1", Service: ServiceKey{Name: "q"}, PreparedQuery: true}}}},
		{name: "unknown destination type", in: proxy(func(s *capi.AgentService) {
			s.Proxy.Upstreams = []capi.Upstream{{DestinationType: "peer", DestinationName: "q", LocalBindPort: 1}}
		}), err: `upstream q has destination type "peer", expected service or prepared_query`},
		{name: "upstream in the local datacenter, named", in: proxy(func(s *capi.AgentService) {
			s.Datacenter = "dc1"
			s.Proxy.Upstreams = []capi.Upstream{{DestinationName: "db", Datacenter: "dc1", LocalBindPort: 1234}}
		}), want: Config{ProxyID: "shop_web-sidecar-proxy", Service: ServiceKey{Name: "web"}, Public: ":20000", LocalApp: "127.0.0.1:8080",
			Upstreams: []Upstream{{Bind: "127.0.0.1:1234", Service: ServiceKey{Name: "db"}}}}},
		{name: "upstream in another datacenter", in: proxy(func(s *capi.AgentService) {
			s.Datacenter = "dc1"
			s.Proxy.Upstreams = []capi.Upstream{{DestinationName: "db", Datacenter: "dc2", LocalBindPort: 1234}}
		}), want: Config{ProxyID: "shop_web-sidecar-proxy", Service: ServiceKey{Name: "web"}, Public: ":20000", LocalApp: "127.0.0.1:8080",
			Upstreams: []Upstream{{Bind: "127.0.0.1:1234", Service: ServiceKey{Name: "db"}, Datacenter: "dc2"}}}},
		{name: "upstream on a peer", in: proxy(func(s *capi.AgentService) {
			s.Proxy.Upstreams = []capi.Upstream{{DestinationName: "db", DestinationPeer: "east", LocalBindPort: 1234}}
		}), err: "upstream db is on cluster peer east"},
		{name: "upstream without a port", in: proxy(func(s *capi.AgentService) {
			s.Proxy.Upstreams = []capi.Upstream{{DestinationName: "db"}}
		}), err: "upstream db has local bind port 0"},
		{name: "expose path over http2", in: proxy(func(s *capi.AgentService) {
			s.Proxy.Expose.Paths = []capi.ExposePath{{ListenerPort: 20300, Path: "/grpc", LocalPathPort: 9000, Protocol: "http2"}}
		}), err: `protocol "http2"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ConfigFrom(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ConfigFrom = %+v, %v; want error %q", got, err, tc.err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("ConfigFrom =\n%+v, %v\nwant\n%+v", got, err, tc.want)
			}
		})
	}
}

// TestRegistrationPoll: a new pod's registration is looked for every
// 20 ms in the first second (each poll saved is the pod's start time),
// every 100 ms until 10 s, every second after.
func TestRegistrationPoll(t *testing.T) {
	for _, tc := range []struct {
		waited, want time.Duration
	}{{0, 20 * time.Millisecond}, {999 * time.Millisecond, 20 * time.Millisecond}, {time.Second, 100 * time.Millisecond},
		{9 * time.Second, 100 * time.Millisecond}, {10 * time.Second, time.Second}, {time.Hour, time.Second}} {
		if got := registrationPoll(tc.waited); got != tc.want {
			t.Errorf("registrationPoll(%v) = %v, want %v", tc.waited, got, tc.want)
		}
	}
}
