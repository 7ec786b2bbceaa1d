"""The model zoo (installed as the package `sepcli_zoo`): one folder per model."""
