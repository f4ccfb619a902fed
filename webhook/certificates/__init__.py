"""The webhook's own certificates: generating a CA and a serving certificate, and rotating them in a cluster."""
