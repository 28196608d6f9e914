"""CLI command modules; each registers its commands on tapsc.cli.app."""
