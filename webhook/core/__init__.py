"""The functional core: pure functions of (pod JSON, ServiceAccount, config) -> JSON Patch operations or a denial.

No I/O and no globals; see mutation.py for the steps and model.py for the data types."""
