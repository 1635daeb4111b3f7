"""frontend: the shop's web page (register, browse live stock, order, watch it settle)."""
