"""Azure Workload Identity mutating admission webhook."""
