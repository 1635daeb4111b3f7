"""orders: takes orders and follows each to CONFIRMED or CANCELLED (choreography or saga)."""
