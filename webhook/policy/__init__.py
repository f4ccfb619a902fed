"""Policy: the rules (rules.py), the policy file (schema.py, file.py) and their evaluation per review (evaluate.py)."""
