"""Where ServiceAccounts and Namespaces come from: manifests, or the cluster (list+watch cache, live GETs)."""
