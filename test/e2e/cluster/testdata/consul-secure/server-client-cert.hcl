datacenter = "dc1"
node_name = "consul-server"
server = true
bootstrap_expect = 1
data_dir = "/state/consul/server"
bind_addr = "127.0.0.1"
advertise_addr = "127.0.0.1"
client_addr = "127.0.0.1"
ports {
  http = -1
  https = 27101
  grpc = -1
  grpc_tls = 27103
  dns = -1
  serf_lan = 27110
  serf_wan = -1
  server = 27111
}
acl {
  enabled = true
  default_policy = "deny"
  enable_token_persistence = true
  tokens {
    initial_management = "00000000-0000-4000-8000-00000000000a"
  }
}
tls {
  defaults {
    ca_file = "/state/consul/tls/ca.crt"
    cert_file = "/state/consul/tls/server.crt"
    key_file = "/state/consul/tls/server.key"
    verify_incoming = true
    verify_outgoing = true
  }
  internal_rpc {
    verify_server_hostname = true
  }
  https {
    verify_incoming = false
  }
  grpc {
    verify_incoming = false
  }
}
connect { enabled = true }
performance { raft_multiplier = 1 }
ui_config { enabled = false }
disable_update_check = true
