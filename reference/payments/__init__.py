"""payments: a simulated card gateway that charges, declines and refunds orders."""
