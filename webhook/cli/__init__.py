"""The `wi-webhook` command: arguments, configuration, logging, and the commands serve, mutate, check, verify."""
