"""inventory: the catalog and its stock; reserves, sells and releases stock for orders."""
