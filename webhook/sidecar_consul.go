package webhook

import (
	"fmt"
	"path"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshlet/meshlet/contract"
)

// Data plane consul: Consul's built-in proxy, `consul connect proxy`, run
// by a shell script in the sidecar (the consul image has /bin/sh).
const (
	// loginVolume is an in-memory emptyDir mounted in the sidecars alone.
	// Data plane consul: the CA it verifies the Consul agent with
	// (Consul's CLI takes a file) and, with ACLs, its login token, written
	// mode 0600 by UID 5995 (umask 077). Data plane envoy with ACLs: the
	// login sidecar's part of Envoy's bootstrap, with the token, mode
	// 0400. The app's containers do not mount it.
	loginVolume = "meshlet-consul-login"
	loginDir    = contract.LoginDir
)

// consulProxyScript runs Consul's built-in proxy for the pod's service
// (-sidecar-for takes the service's ID; the proxy registration is found
// from it). The proxy exits at once when its registration is not there
// yet, and the node agent registers the pod only once it has an IP, which
// is after this container starts: so it is retried every second here
// rather than left to kubelet's crash back-off (10 s, then doubling).
// SIGTERM goes to the proxy, so the pod stops promptly; with a login, the
// token is then logged out. %s is the setup: the address, TLS, the login.
const consulProxyScript = `%s
trap 'kill -TERM $p 2>/dev/null; wait $p; %sexit 0' TERM INT
while :; do
  consul connect proxy -sidecar-for "$SERVICE_ID" & p=$!
  wait $p && { %sexit 0; }
  echo "meshlet: consul connect proxy exited ($?); retrying in 1s (is $SERVICE_ID registered on the node's agent?)" >&2
  sleep 1
done`

// consulSidecar is data plane consul's sidecar. Over TLS it reaches the
// Consul agent's HTTPS port with the CA the webhook puts in its
// environment; with an auth method it first logs in with the pod's
// ServiceAccount token, as meshlet-proxy does (the same meta, so the token
// reaper knows the token's pod), retrying every second until Consul says
// yes, and acts with that token alone.
func consulSidecar(c corev1.Container, pod *corev1.Pod, cfg Config) corev1.Container {
	c.Name, c.Image = consulSidecarName, cfg.ConsulImage
	setup := []string{fmt.Sprintf(`export CONSUL_HTTP_ADDR="$HOST_IP:%d"`, cfg.AgentHTTPPort)}
	logout := ""
	if t := cfg.AgentTLS; t.HTTPSPort != 0 {
		ca := path.Join(loginDir, "ca.pem")
		c.Env = append(c.Env, corev1.EnvVar{Name: contract.EnvConsulCACertPEM, Value: t.CAPEM})
		setup = []string{
			fmt.Sprintf(`printf '%%s\n' "$%s" > %s`, contract.EnvConsulCACertPEM, ca),
			fmt.Sprintf(`export CONSUL_HTTP_ADDR="https://$HOST_IP:%d" CONSUL_CACERT=%s`, t.HTTPSPort, ca)}
		if t.ServerName != "" {
			setup = append(setup, "export CONSUL_TLS_SERVER_NAME="+shellQuote(t.ServerName))
		}
	}
	if m, ok := serviceAccountTokenMount(pod); ok && cfg.ACLAuthMethod != "" {
		tok := path.Join(loginDir, "acl-token")
		method := shellQuote(cfg.ACLAuthMethod)
		// The name inside the script's double-quoted strings.
		quoteless := strings.NewReplacer(`"`, "", `\`, "", "$", "", "`", "").Replace(cfg.ACLAuthMethod)
		setup = append(setup, "last=",
			fmt.Sprintf(`until out=$(consul login -method=%s -bearer-token-file=%s -token-sink-file=%s -meta "pod=$%s/$%s" -meta "pod-uid=$%s" 2>&1); do`,
				method, contract.ServiceAccountTokenFile, tok, contract.EnvPodNamespace, contract.EnvPodName, contract.EnvPodUID),
			// Consul's answer, made safe for a JSON string.
			`  msg=$(printf '%s' "$out" | tr -d '"\\' | tr '\n\t\r' '   ' | cut -c1-400)`,
			fmt.Sprintf(`  echo "meshlet: consul login to auth method %s failed; the proxy serves nothing until it succeeds: $msg" >&2`, quoteless),
			// Once per cause, to the node agent, which records it as an
			// Event on the pod (as meshlet-proxy's reports). timeout, not
			// wget's -T: Debian's static busybox crashes on -T.
			fmt.Sprintf(`  if [ "$msg" != "$last" ] && timeout 3 wget -q -O /dev/null --header 'Content-Type: application/json' --post-data "{\"namespace\":\"$%s\",\"pod\":\"$%s\",\"uid\":\"$%s\",\"reason\":\"%s\",\"message\":\"login to Consul auth method %s: $msg\"}" "http://$%s:%d%s"; then last=$msg; fi`,
				contract.EnvPodNamespace, contract.EnvPodName, contract.EnvPodUID, contract.ProblemLoginFailed, quoteless,
				contract.EnvHostIP, cfg.NodeAgentPort, contract.SidecarProblemPath),
			"  sleep 1",
			"done",
			"export CONSUL_HTTP_TOKEN_FILE="+tok)
		logout = fmt.Sprintf("[ -s %s ] && consul logout; ", tok)
		c.VolumeMounts = append(c.VolumeMounts, m)
	}
	if loginVolumeNeeded(cfg) {
		// The CA and the token: the sidecar's UID alone reads them.
		setup = append([]string{"umask 077"}, setup...)
		c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: loginVolume, MountPath: loginDir})
	}
	c.Command = []string{"/bin/sh", "-c", fmt.Sprintf(consulProxyScript, strings.Join(setup, "\n"), logout, logout)}
	return c
}

// loginVolumeNeeded: the sidecars write a file (data plane consul: its
// CA, its token; envoy: the login sidecar's token file), and so get
// loginVolume.
func loginVolumeNeeded(cfg Config) bool {
	switch cfg.DataPlane {
	case DataPlaneConsul:
		return cfg.AgentTLS.HTTPSPort != 0 || cfg.ACLAuthMethod != ""
	case DataPlaneEnvoy:
		return cfg.ACLAuthMethod != ""
	}
	return false
}

// loginVolumeSpec is loginVolume: memory, never the node's disk.
func loginVolumeSpec() corev1.Volume {
	return corev1.Volume{Name: loginVolume, VolumeSource: corev1.VolumeSource{
		EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}}
}

// shellQuote is s as one word of a POSIX shell.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
