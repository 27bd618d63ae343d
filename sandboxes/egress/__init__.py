"""Egress control: sandboxes reach only the hosts their campaign allows, through a proxy on the
host that they reach over a UNIX socket (relayed to a loopback port inside the sandbox).

policy      the `network:` value → NetworkPolicy (allowlist) and Limits
packages    this host's pip/npm/apt indexes and the env a sandbox needs to use them
addresses   which resolved addresses may be reached (public unicast only)
proxy       EgressProxy: one per worker, one socket per sandbox, events per connection
worker      this process's proxy (egress_proxy / egress_proxy_stop)
relay       the in-sandbox relay binary (relay.c, built and cached by relay_binary)
"""
