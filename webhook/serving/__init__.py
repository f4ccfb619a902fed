"""The imperative shell that serves reviews: the HTTPS server, the AdmissionReview envelope, limits, health, metrics,
the hand-off and workers."""
