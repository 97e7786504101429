"""HTTP transport: what requests pass through on their way to and from the routes."""
