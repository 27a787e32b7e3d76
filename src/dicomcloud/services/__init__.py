"""Services wire ports to domain functions and handle signals; the logic lives in the domain."""
