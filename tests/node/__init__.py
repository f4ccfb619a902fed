"""Tests on a real single-node cluster (kubelet, containerd, runc) running the project's built image."""
