"""The `mstore` command line."""
