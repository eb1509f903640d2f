"""Metadata backends: etcd (membership leases, leader election, segment descriptors)."""
