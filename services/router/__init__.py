"""The router: the stateless front door every client talks to (DESIGN §5)."""
