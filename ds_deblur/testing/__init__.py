"""Test support shipped with the package: fault injection for the test and reliability suites (``faults``),
driven by environment variables that real runs never set."""
