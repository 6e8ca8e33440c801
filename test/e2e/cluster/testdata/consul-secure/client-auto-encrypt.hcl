datacenter = "dc1"
node_name = "secure-node"
server = false
data_dir = "/state/consul/client"
bind_addr = "127.0.0.1"
advertise_addr = "127.0.0.1"
client_addr = "127.0.0.1"
ports {
  http = -1
  https = 27121
  grpc = -1
  grpc_tls = 27123
  dns = 27124
  serf_lan = 27130
  server = 27111
}
retry_join = ["127.0.0.1:27110"]
retry_interval = "1s"
acl {
  enabled = true
  default_policy = "deny"
  enable_token_persistence = true
  tokens {
    agent = "00000000-0000-4000-8000-00000000000b"
  }
}
tls {
  defaults {
    ca_file = "/state/consul/tls/ca.crt"
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
    use_auto_cert = true
  }
}
auto_encrypt {
  tls = true
  ip_san = ["127.0.0.1"]
}
disable_update_check = true
