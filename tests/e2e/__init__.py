"""End-to-end tests against a real kube-apiserver + etcd (see cluster.py) and a fake Entra ID (fake_entra.py)."""
