# Example configuration of colex-agent, read with `colex-agent --config FILE`.
# Every setting is optional; docs/agent-config.md describes each one.

# Labels of this host, reported to the controller for placement.
labels = {
  zone = "eu-1a"
  disk = "ssd"
}

# Maximum number of tasks (processes and threads) in each silo. 0 means no limit;
# without this line the agent uses 4096.
pids_limit = 4096

# User namespaces stay on unless this is true.
disable_user_namespaces = false

# UDP port of this host's WireGuard mesh device. The device listens on every interface of
# the host and the other hosts send to it, so the host's firewall must let it in.
mesh_port = 51820

# TCP port of the metadata service on the bridge address. Silos find its URL in the
# METADATA_ENDPOINT variable.
metadata_port = 17832

# Fixed names that the agent's DNS resolver answers for the silos on this host, beside
# NAME.silo for every running silo of the cluster. Each maps a host name to one IPv4 or IPv6
# address, and names are compared without regard to case. An entry such as "web.silo" wins
# over the silo web. Silos with network.nameservers use those servers and never ask this
# resolver.
hostnames = {
  "db.internal"    = "10.1.2.3"
  "backup.example" = "2001:db8::7"
}

# A tarball image: the output of `docker export`, plain or gzip-compressed.
# Silos use it with base = "img://alpine". The built-in busybox image needs no block.
image "alpine" {
  path = "/var/lib/colex/images/alpine-3.20.tar.gz"
}

# A host folder offered to silos under the bind id "shared-data". A silo mounts it
# with a block bind "label" { id = "shared-data", path = "/data" }.
bind "shared-data" {
  path     = "/srv/colex/shared-data"
  writable = false
}

# A writable bind: silos may write to this folder on the host.
bind "scratch" {
  path     = "/srv/colex/scratch"
  writable = true
}
