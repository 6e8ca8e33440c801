// Package kubeclient is meshlet's Kubernetes API client: client-go's REST
// client and its generic typed clients (gentype), over a scheme that holds
// only the kinds meshlet reads and writes.
//
// Why not client-go's clientset: importing k8s.io/client-go/kubernetes
// (or any typed client, informer factory or discovery) registers all 57
// built-in API groups when the process starts. In the meshlet binary that
// was a third of its size and about 9 MiB of resident memory in every
// process, the node agent's included, which runs on every node against a
// 40 MiB budget (docs/benchmarks.md). TestBinariesLinkNothingHeavy (cmd/meshlet) keeps it
// out.
package kubeclient

import (
	"context"
	"encoding/json"
	"fmt"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	authnv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/version"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/gentype"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Scheme holds the kinds meshlet uses; record.NewRecorder takes it too.
var Scheme = runtime.NewScheme()

var (
	codecs         = serializer.NewCodecFactory(Scheme)
	parameterCodec = runtime.NewParameterCodec(Scheme)
)

func init() {
	utilruntime.Must(corev1.AddToScheme(Scheme))
	utilruntime.Must(appsv1.AddToScheme(Scheme))
	utilruntime.Must(admissionv1.AddToScheme(Scheme))
	utilruntime.Must(authnv1.AddToScheme(Scheme))
	utilruntime.Must(coordinationv1.AddToScheme(Scheme))
	metav1.AddToGroupVersion(Scheme, schema.GroupVersion{Version: "v1"})
}

// Resource is the typed client of one kind: client-go's generated
// clients (and so its fake clientset) and gentype's both satisfy it.
type Resource[T, L runtime.Object] interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (T, error)
	List(ctx context.Context, opts metav1.ListOptions) (L, error)
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
	Create(ctx context.Context, obj T, opts metav1.CreateOptions) (T, error)
	Update(ctx context.Context, obj T, opts metav1.UpdateOptions) (T, error)
	Delete(ctx context.Context, name string, opts metav1.DeleteOptions) error
	Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, subresources ...string) (T, error)
}

// Interface is what meshlet's components ask of the API server.
type Interface interface {
	Pods(namespace string) Resource[*corev1.Pod, *corev1.PodList]
	Services(namespace string) Resource[*corev1.Service, *corev1.ServiceList]
	Events(namespace string) Resource[*corev1.Event, *corev1.EventList]
	Secrets(namespace string) Resource[*corev1.Secret, *corev1.SecretList]
	DaemonSets(namespace string) Resource[*appsv1.DaemonSet, *appsv1.DaemonSetList]
	MutatingWebhookConfigurations() Resource[*admissionv1.MutatingWebhookConfiguration, *admissionv1.MutatingWebhookConfigurationList]
	// Leases hold the token reaper's leader election.
	Leases(namespace string) Resource[*coordinationv1.Lease, *coordinationv1.LeaseList]
	// CreateToken is TokenRequest, the serviceaccounts/token subresource.
	CreateToken(ctx context.Context, namespace, serviceAccount string, req *authnv1.TokenRequest, opts metav1.CreateOptions) (*authnv1.TokenRequest, error)
	ServerVersion() (*version.Info, error)
}

// Client is Interface against an API server.
type Client struct {
	core, apps, admission, coordination rest.Interface
}

// Config is the REST config from a kubeconfig file, or the pod's service
// account when path is empty, named userAgent.
func Config(path, userAgent string) (*rest.Config, error) {
	var rc *rest.Config
	var err error
	if path != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", path)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	rc.UserAgent = userAgent
	return rc, nil
}

// New builds a Client from rc; it makes no request.
func New(rc *rest.Config) (*Client, error) {
	core, err := restFor(rc, "/api", corev1.SchemeGroupVersion)
	if err != nil {
		return nil, err
	}
	apps, err := restFor(rc, "/apis", appsv1.SchemeGroupVersion)
	if err != nil {
		return nil, err
	}
	admission, err := restFor(rc, "/apis", admissionv1.SchemeGroupVersion)
	if err != nil {
		return nil, err
	}
	coordination, err := restFor(rc, "/apis", coordinationv1.SchemeGroupVersion)
	if err != nil {
		return nil, err
	}
	return &Client{core: core, apps: apps, admission: admission, coordination: coordination}, nil
}

func restFor(rc *rest.Config, apiPath string, gv schema.GroupVersion) (*rest.RESTClient, error) {
	c := rest.CopyConfig(rc)
	c.APIPath = apiPath
	c.GroupVersion = &gv
	c.NegotiatedSerializer = rest.CodecFactoryForGeneratedClient(Scheme, codecs).WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	r, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for %s: %w", gv, err)
	}
	return r, nil
}

func (c *Client) Pods(ns string) Resource[*corev1.Pod, *corev1.PodList] {
	return gentype.NewClientWithList("pods", c.core, parameterCodec, ns,
		func() *corev1.Pod { return &corev1.Pod{} }, func() *corev1.PodList { return &corev1.PodList{} },
		gentype.PrefersProtobuf[*corev1.Pod]())
}

func (c *Client) Services(ns string) Resource[*corev1.Service, *corev1.ServiceList] {
	return gentype.NewClientWithList("services", c.core, parameterCodec, ns,
		func() *corev1.Service { return &corev1.Service{} }, func() *corev1.ServiceList { return &corev1.ServiceList{} },
		gentype.PrefersProtobuf[*corev1.Service]())
}

func (c *Client) Events(ns string) Resource[*corev1.Event, *corev1.EventList] {
	return gentype.NewClientWithList("events", c.core, parameterCodec, ns,
		func() *corev1.Event { return &corev1.Event{} }, func() *corev1.EventList { return &corev1.EventList{} },
		gentype.PrefersProtobuf[*corev1.Event]())
}

func (c *Client) Secrets(ns string) Resource[*corev1.Secret, *corev1.SecretList] {
	return gentype.NewClientWithList("secrets", c.core, parameterCodec, ns,
		func() *corev1.Secret { return &corev1.Secret{} }, func() *corev1.SecretList { return &corev1.SecretList{} },
		gentype.PrefersProtobuf[*corev1.Secret]())
}

func (c *Client) DaemonSets(ns string) Resource[*appsv1.DaemonSet, *appsv1.DaemonSetList] {
	return gentype.NewClientWithList("daemonsets", c.apps, parameterCodec, ns,
		func() *appsv1.DaemonSet { return &appsv1.DaemonSet{} }, func() *appsv1.DaemonSetList { return &appsv1.DaemonSetList{} },
		gentype.PrefersProtobuf[*appsv1.DaemonSet]())
}

func (c *Client) MutatingWebhookConfigurations() Resource[*admissionv1.MutatingWebhookConfiguration, *admissionv1.MutatingWebhookConfigurationList] {
	return gentype.NewClientWithList("mutatingwebhookconfigurations", c.admission, parameterCodec, "",
		func() *admissionv1.MutatingWebhookConfiguration { return &admissionv1.MutatingWebhookConfiguration{} },
		func() *admissionv1.MutatingWebhookConfigurationList {
			return &admissionv1.MutatingWebhookConfigurationList{}
		},
		gentype.PrefersProtobuf[*admissionv1.MutatingWebhookConfiguration]())
}

func (c *Client) Leases(ns string) Resource[*coordinationv1.Lease, *coordinationv1.LeaseList] {
	return gentype.NewClientWithList("leases", c.coordination, parameterCodec, ns,
		func() *coordinationv1.Lease { return &coordinationv1.Lease{} }, func() *coordinationv1.LeaseList { return &coordinationv1.LeaseList{} },
		gentype.PrefersProtobuf[*coordinationv1.Lease]())
}

func (c *Client) CreateToken(ctx context.Context, ns, sa string, req *authnv1.TokenRequest, opts metav1.CreateOptions) (*authnv1.TokenRequest, error) {
	out := &authnv1.TokenRequest{}
	err := c.core.Post().UseProtobufAsDefault().Namespace(ns).Resource("serviceaccounts").Name(sa).SubResource("token").
		VersionedParams(&opts, parameterCodec).Body(req).Do(ctx).Into(out)
	return out, err
}

// ServerVersion is GET /version.
func (c *Client) ServerVersion() (*version.Info, error) {
	var v version.Info
	body, err := c.core.Get().AbsPath("/version").Do(context.Background()).Raw()
	if err != nil {
		return nil, fmt.Errorf("API server version: %w", err)
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return nil, fmt.Errorf("API server version: unexpected answer %q: %w", body, err)
	}
	return &v, nil
}
